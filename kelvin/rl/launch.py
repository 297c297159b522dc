"""Start N data-parallel training processes: `kelvin train ... trainer.num_processes=N` re-runs itself N times.

Why Kelvin launches for you: `accelerate launch --cpu --num_processes 2` (and without `--cpu` on a machine with no
GPU) starts ONE process, silently; a run that thinks it is data-parallel but is not is worse than an error. torch's
own elastic launcher (what `torchrun` runs) starts exactly N workers on CPU and on GPUs and sets RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address, which accelerate reads: gloo on CPU, nccl on GPUs (one GPU per process).
So the one documented way is `kelvin train ... trainer.num_processes=N`; running `torchrun --nproc_per_node N -m
kelvin.cli train ... trainer.num_processes=N` by hand does the same. The trainer refuses to start when the launched
world size and `trainer.num_processes` disagree, and every run records how many processes trained it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def launched_world_size() -> int:
    """WORLD_SIZE set by torchrun / the elastic launcher (1 when this process was not launched as a worker)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_worker() -> bool:
    """True inside a process started by a launcher (torchrun, `kelvin train` with num_processes > 1)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


LAUNCHED_BY_KELVIN = "KELVIN_LAUNCHED_WORKER"  # set for the workers `run_workers` starts


def launched_by_kelvin() -> bool:
    """A worker of `kelvin train --num-processes N`: its launching process holds the run folder's lock and has made
    every check before work (a worker of a hand-started torchrun does both itself, on rank 0)."""
    return is_worker() and os.environ.get(LAUNCHED_BY_KELVIN) == "1"


def is_first_worker() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def launch_command(num_processes: int, module_args: list[str]) -> list[str]:
    """The command that runs `python -m kelvin.cli <module_args>` in `num_processes` workers on this machine.

    `--standalone` picks a free local rendezvous port, so several runs can share a machine.
    """
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(num_processes),
        "-m",
        "kelvin.cli",
        *module_args,
    ]


def run_workers(num_processes: int, module_args: list[str]) -> int:
    """Run the workers to completion and return their exit status (non-zero if any worker failed).

    Each worker gets one CPU thread unless OMP_NUM_THREADS (or trainer.torch_threads) says otherwise, as torchrun
    does: N processes with a full thread pool each would oversubscribe the cores.
    """
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), LAUNCHED_BY_KELVIN: "1"}
    agent = subprocess.Popen(launch_command(num_processes, module_args), env=env)

    # The launcher puts each worker in its own session, so a signal to this process alone would leave them
    # running: pass SIGTERM / SIGINT on, and the launcher stops its workers.
    def forward(signum: int, _frame: object) -> None:
        agent.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return agent.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
