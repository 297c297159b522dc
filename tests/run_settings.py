"""Overrides shared by tests that train for real: a two-step run small enough for seconds on 2 cores."""

TWO_STEP_RUN = [
    "trainer.steps=2",
    "trainer.prompts_per_step=4",
    "sampling.num_generations=4",
    "trainer.micro_batch_size=8",
    "sampling.max_completion_length=40",
    "task.eval_size=8",
]
