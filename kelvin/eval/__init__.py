"""Evaluation: avg@k, pass@k, maj@k at fixed or learned temperatures; sampling from a saved model."""
