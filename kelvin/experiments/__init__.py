"""Experiments: comparison recipes, the runner, results, the report with its statistics and plots, the demo."""
