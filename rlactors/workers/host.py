"""Facts about the process a worker runs in: its Ray node and CPU threads.

Ray gives an actor with fractional CPUs one OpenMP thread; the phases of a step run one after
another, so each phase may use every core of its node.
"""

from __future__ import annotations

import os


def use_all_cores() -> None:
    import torch

    if not torch.cuda.is_available():
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(cores)


def current_node_id() -> str:
    """The Ray node this process runs on ("local" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
