"""The RL loop: sampling, log-probabilities, rollouts, GRPO losses, the policy pass, the trainer, checkpoints."""
