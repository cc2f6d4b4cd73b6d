"""`gpu_memory_utilization: auto`: measure what the learner needs for the configured batch, give
vLLM the rest of the GPU.

The colocated learner is built first (its weights are then resident) and runs one forward and
backward pass on a worst-case micro-batch (`micro_batch_size` rows of `max_prompt_length +
max_completion_length` tokens) before vLLM starts. What that pass allocates above the resident
weights, plus AdamW's two moments of the adapter and a margin for CUDA contexts and
fragmentation, is kept free; vLLM gets the rest of what is free then. Memory another process or
an earlier object of this one holds is never promised to vLLM. On CPU there is nothing to
measure: "auto" is 0.3 of RAM.

With `vllm_enable_sleep_mode`, vLLM sleeps while the learner trains, so the update's activations
never share the GPU with vLLM: vLLM's share then leaves out only what the learner keeps between
updates (AdamW's moments and the adapter's gradients), and the update alone must fit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlactors.core.records import MemoryNeed

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig
    from rlactors.distributed.groups import LearnerGroup

GIB = 2**30
MARGIN_BYTES = 3 * GIB  # two CUDA contexts, NCCL and allocator fragmentation
CPU_SHARE = 0.3
ALONE_SHARE = 0.9  # vLLM's default, for a rollout worker with a GPU of its own
MIN_SHARE = 0.05


class MemoryPlanError(RuntimeError):
    """The learner leaves vLLM too little of the GPU."""


def share_for_vllm(config: GRPOConfig, learners: LearnerGroup, use_gpus: bool) -> float:
    """`gpu_memory_utilization` for vLLM: as configured, or measured ("auto") on the built learners."""
    if config.gpu_memory_utilization != "auto":
        return float(config.gpu_memory_utilization)
    need = learners.memory_need() if use_gpus and config.placement == "colocate" else None
    if need is None:
        share = ALONE_SHARE if use_gpus else CPU_SHARE
        print(f"rlactors: gpu_memory_utilization auto -> {share}", flush=True)
        return share
    asleep = config.vllm_enable_sleep_mode
    share = vllm_share(need, asleep_while_training=asleep)
    kept = f", keeps {need.kept_bytes / GIB:.1f} GiB while vLLM is awake" if asleep else ""
    print(
        f"rlactors: gpu_memory_utilization auto -> {share} (the learner needs {need.extra_bytes / GIB:.1f} GiB "
        f"more to train{kept}; {need.free_bytes / GIB:.1f} of {need.total_bytes / GIB:.1f} GiB free)",
        flush=True,
    )
    return share


def vllm_share(need: MemoryNeed, margin_bytes: int = MARGIN_BYTES, asleep_while_training: bool = False) -> float:
    """The `gpu_memory_utilization` that leaves the learner's extra need and a margin free.

    vLLM's share is a fraction of the whole device that it may hold, so it is what is free now
    less what the learner will still allocate beside it, over the total: all of the training
    step's need, or, with vLLM asleep while the learner trains, what the learner keeps.
    """
    beside = need.kept_bytes if asleep_while_training else need.extra_bytes
    share = int((need.free_bytes - beside - margin_bytes) / need.total_bytes * 100) / 100
    update_fits = need.extra_bytes + margin_bytes <= need.free_bytes  # implied by the share when vLLM stays awake
    if share < MIN_SHARE or not update_fits:
        left = f"leaving vLLM {share:.2f}" if update_fits else "too little for the update alone"
        raise MemoryPlanError(
            f"gpu_memory_utilization=auto: the learner needs {need.extra_bytes / GIB:.1f} GiB more while "
            f"training, and {need.free_bytes / GIB:.1f} GiB of the GPU's {need.total_bytes / GIB:.1f} GiB are "
            f"free (less {margin_bytes / GIB:.0f} GiB margin), {left}: lower "
            "micro_batch_size, turn gradient_checkpointing on, free the GPU, or use placement: disaggregate"
        )
    return min(share, 0.95)
