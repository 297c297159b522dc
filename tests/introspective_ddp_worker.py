"""One data-parallel process of test_introspective.py::test_phi_update_is_data_parallel (gloo, CPU).

Usage: python introspective_ddp_worker.py INPUT OUTPUT  (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment)
"""

from __future__ import annotations

import os
import sys

import torch

from kelvin.controllers.base import Scores
from kelvin.controllers.introspective import IntrospectiveController


def main(source: str, target: str) -> None:
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    data = torch.load(source, weights_only=False)
    rows = slice(rank * data["rows_per_rank"], (rank + 1) * data["rows_per_rank"])
    controller = IntrospectiveController(data["config"], data["hidden_size"])
    controller.load_state_dict(data["state"])
    scores = Scores(
        old_logprobs=data["scores"].old_logprobs[rows],
        entropy_at_one=data["scores"].entropy_at_one[rows],
        hidden_states=data["scores"].hidden_states[rows],
    )
    metrics = controller.update(data["rollouts"].select(rows), data["advantages"][rows], scores)
    torch.save({"head": controller.head.state_dict(), "metrics": metrics, "world": world}, f"{target}.{rank}")
    torch.distributed.barrier()  # neither process tears gloo down while the other still uses it
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1], sys.argv[2])
