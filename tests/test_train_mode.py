"""The policy update runs in train mode, sampling in eval mode, so gradient checkpointing really recomputes.

transformers checkpoints (and dropout drops) only in train mode: before the fix, a forward hook on a decoder layer
inside a decoder layer fired once per micro-batch with `model.gradient_checkpointing: true`: nothing was recomputed.
"""

from __future__ import annotations

import pytest

from kelvin.config import load_config
from kelvin.rl.trainer import Trainer


@pytest.mark.parametrize("checkpointing", [False, True])
def test_layer_runs_once_per_micro_batch_or_twice_with_checkpointing(tmp_path, warm_model_dir, checkpointing):
    config = load_config(
        None,
        [
            "trainer.prompts_per_step=2",
            "sampling.num_generations=4",
            "trainer.micro_batch_size=4",  # 8 rows: 2 micro-batches
            "sampling.max_completion_length=12",
            "task.eval_size=4",
            "trainer.tensorboard=false",
            f"model.gradient_checkpointing={str(checkpointing).lower()}",
        ],
    )
    trainer = Trainer(config, tmp_path, quiet=True)
    # The MLP's mode at every call, in call order. transformers checkpoints a decoder layer's `forward` (hooks on the
    # layer itself stay outside and run once), so the module watched is one inside the layer; and it is a pre-hook,
    # since the non-reentrant recomputation stops once it has every saved tensor back.
    modes: list[bool] = []
    mlp = trainer.policy.model.layers[0].mlp
    handle = mlp.register_forward_pre_hook(lambda module, _: modes.append(module.training))
    trainer.train_step()
    handle.remove()

    sampling = modes.index(True)
    assert sampling >= 1 and not any(modes[:sampling])  # sampling: one call per decoding position, all in eval mode
    assert all(modes[sampling:])  # the update: every call in train mode
    assert len(modes) - sampling == 2 * (2 if checkpointing else 1)  # recomputed in backward under checkpointing
    assert not trainer.policy.training  # back in eval mode for the next step's sampling
