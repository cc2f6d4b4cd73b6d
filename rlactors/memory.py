"""`gpu_memory_utilization: auto`: measure what the learner needs for the configured batch, give
vLLM the rest of the GPU.

The colocated learner is built first (its weights are then resident) and runs one forward and
backward pass on a worst-case micro-batch (`micro_batch_size` rows of `max_prompt_length +
max_completion_length` tokens) before vLLM starts. What that pass allocates above the resident
weights, plus AdamW's two moments of the adapter and a margin for CUDA contexts and
fragmentation, is kept free; vLLM gets the rest of what is free then. Memory another process or
an earlier object of this one holds is never promised to vLLM. On CPU there is nothing to
measure: "auto" is 0.3 of RAM.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlactors.config import GRPOConfig
    from rlactors.group import LearnerGroup
    from rlactors.workers.learner import LearnerWorker

GIB = 2**30
MARGIN_BYTES = 3 * GIB  # two CUDA contexts, NCCL and allocator fragmentation
CPU_SHARE = 0.3
ALONE_SHARE = 0.9  # vLLM's default, for a rollout worker with a GPU of its own
MIN_SHARE = 0.05


class MemoryPlanError(RuntimeError):
    """The learner leaves vLLM too little of the GPU."""


@dataclass(frozen=True)
class MemoryNeed:
    """One learner's GPU, measured after its model is resident and before vLLM starts."""

    extra_bytes: int  # what a training micro-step allocates above the resident weights, plus AdamW
    free_bytes: int  # free on the device (all processes) after that step's memory was handed back
    total_bytes: int


def share_for_vllm(config: "GRPOConfig", learners: "LearnerGroup", use_gpus: bool) -> float:
    """`gpu_memory_utilization` for vLLM: as configured, or measured ("auto") on the built learners."""
    if config.gpu_memory_utilization != "auto":
        return float(config.gpu_memory_utilization)
    need = learners.memory_need() if use_gpus and config.placement == "colocate" else None
    if need is None:
        share = ALONE_SHARE if use_gpus else CPU_SHARE
        print(f"rlactors: gpu_memory_utilization auto -> {share}", flush=True)
        return share
    share = vllm_share(need)
    print(f"rlactors: gpu_memory_utilization auto -> {share} (the learner needs {need.extra_bytes / GIB:.1f} GiB "
          f"more to train; {need.free_bytes / GIB:.1f} of {need.total_bytes / GIB:.1f} GiB free)", flush=True)
    return share


def vllm_share(need: MemoryNeed, margin_bytes: int = MARGIN_BYTES) -> float:
    """The `gpu_memory_utilization` that leaves the learner's extra need and a margin free.

    vLLM's share is a fraction of the whole device that it may hold, so it is what is free now
    less what the learner will still allocate, over the total.
    """
    usable = need.free_bytes - need.extra_bytes - margin_bytes
    share = int(usable / need.total_bytes * 100) / 100
    if share < MIN_SHARE:
        raise MemoryPlanError(
            f"gpu_memory_utilization=auto: the learner needs {need.extra_bytes / GIB:.1f} GiB more while "
            f"training, and {need.free_bytes / GIB:.1f} GiB of the GPU's {need.total_bytes / GIB:.1f} GiB are "
            f"free (less {margin_bytes / GIB:.0f} GiB margin), leaving vLLM {share:.2f}: lower "
            "micro_batch_size, turn gradient_checkpointing on, free the GPU, or use placement: disaggregate")
    return min(share, 0.95)


def measure_learner(learner: "LearnerWorker") -> MemoryNeed | None:
    """The learner's `MemoryNeed` at the configured sizes; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    cfg = learner.config
    model = learner.model
    params = [p for p in model.parameters() if p.requires_grad]
    adam = 2 * sum(p.numel() * 4 for p in params)  # fp32 exp_avg and exp_avg_sq, made at the first step
    rows, length = cfg.micro_batch_size, cfg.max_prompt_length + cfg.max_completion_length
    ids = torch.randint(0, model.config.vocab_size, (rows, length), device=learner.device)
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with learner.mixed_precision():
        logits = model(input_ids=ids, logits_to_keep=cfg.max_completion_length + 1).logits
        loss = torch.log_softmax(logits.float(), -1).mean()
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    for p in params:
        p.grad = None
    del ids, logits, loss
    torch.cuda.empty_cache()  # hand the cached blocks back before vLLM looks at free memory
    free, total = torch.cuda.mem_get_info(learner.device)
    return MemoryNeed(extra_bytes=peak - resident + adam, free_bytes=free, total_bytes=total)
