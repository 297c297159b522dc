"""Rewards: the task verifier and user reward functions, run under time limits in a worker process."""
