"""How a rollout batch splits over processes and micro-batches is validated before any work, with a fix in the error."""

from __future__ import annotations

import pytest

from kelvin.config import ConfigError, load_config
from kelvin.rl.launch import launch_command
from kelvin.rl.trainer import Trainer


def test_uneven_micro_batches_per_process_are_refused_with_a_working_suggestion():
    # 6 prompts x 4 completions over 2 processes = 12 rows each: micro-batches of 8 would be 8 + 4 (rows re-weighted)
    bad = ["trainer.prompts_per_step=6", "sampling.num_generations=4", "trainer.micro_batch_size=8"]
    load_config(None, bad)  # one process: 24 rows, 8 divides them
    with pytest.raises(ConfigError) as err:
        load_config(None, [*bad, "trainer.num_processes=2"])
    message = str(err.value)
    for part in ("trainer.prompts_per_step=6", "trainer.num_processes=2", "sampling.num_generations=4", "= 12"):
        assert part in message
    assert "trainer.micro_batch_size=6" in message  # the suggestion works:
    load_config(None, [*bad[:2], "trainer.micro_batch_size=6", "trainer.num_processes=2"])


def test_prompts_must_split_into_whole_groups_per_process():
    with pytest.raises(ConfigError, match=r"trainer.prompts_per_step=6 must be divisible by trainer.num_processes=4"):
        load_config(None, ["trainer.prompts_per_step=6", "trainer.num_processes=4", "trainer.micro_batch_size=1"])


def test_a_run_launched_as_another_number_of_processes_is_refused(tmp_path):
    config = load_config(None, ["trainer.num_processes=2", "trainer.prompts_per_step=8", "trainer.micro_batch_size=8"])
    with pytest.raises(ConfigError, match=r"started as 1 process\(es\) but trainer.num_processes=2"):
        Trainer(config, tmp_path, quiet=True)  # this pytest process is one process, not two


def test_the_launch_starts_n_workers_of_kelvin_cli():
    command = launch_command(3, ["train", "trainer.num_processes=3"])
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert command[command.index("--nproc_per_node") + 1] == "3"
    assert command[-4:] == ["-m", "kelvin.cli", "train", "trainer.num_processes=3"]
