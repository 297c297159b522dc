"""Models: local Hugging Face folders, the tiny embedded model and its warm-up, converted pretrained models."""
