"""Kelvin: GRPO-style RL of language models where the sampling temperature is a learned policy."""

# Registers the built-in temperature controllers, whose names and sections the config tree is built from.
import kelvin.controllers  # noqa: F401  (imported for its registrations)
