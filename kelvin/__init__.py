"""Kelvin: GRPO-style RL of language models where the sampling temperature is a learned policy."""
