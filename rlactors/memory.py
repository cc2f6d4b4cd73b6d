"""`gpu_memory_utilization: auto`: measure what the learner needs for the configured batch, give
vLLM the rest of the GPU.

The colocated learner runs one forward and backward pass on a worst-case micro-batch
(`micro_batch_size` rows of `max_prompt_length + max_completion_length` tokens) before vLLM
starts; its peak, plus AdamW's two moments of the adapter and a margin for CUDA contexts and
fragmentation, is the learner's share. On CPU there is nothing to measure: "auto" is 0.3 of RAM.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlactors.workers.learner import LearnerWorker

GIB = 2**30
MARGIN_BYTES = 3 * GIB  # two CUDA contexts, NCCL and allocator fragmentation
CPU_SHARE = 0.3
ALONE_SHARE = 0.9  # vLLM's default, for a rollout worker with a GPU of its own
MIN_SHARE = 0.05


class MemoryPlanError(RuntimeError):
    """The learner leaves vLLM too little of the GPU."""


def vllm_share(total_bytes: int, learner_bytes: int, margin_bytes: int = MARGIN_BYTES) -> float:
    """The `gpu_memory_utilization` that leaves `learner_bytes` + `margin_bytes` of the GPU free."""
    share = int((total_bytes - learner_bytes - margin_bytes) / total_bytes * 100) / 100
    if share < MIN_SHARE:
        raise MemoryPlanError(
            f"gpu_memory_utilization=auto: the learner needs {learner_bytes / GIB:.1f} GiB of the GPU's "
            f"{total_bytes / GIB:.1f} GiB (plus {margin_bytes / GIB:.0f} GiB margin), leaving vLLM {share:.2f}: "
            "lower micro_batch_size, turn gradient_checkpointing on, or use placement: disaggregate")
    return min(share, 0.95)


def learner_peak_bytes(learner: "LearnerWorker") -> int | None:
    """Peak GPU bytes of one training micro-step at the configured sizes; None without CUDA."""
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
    torch.cuda.reset_peak_memory_stats()
    with learner._activation_offload():
        logits = model(input_ids=ids, logits_to_keep=cfg.max_completion_length + 1).logits
        loss = torch.log_softmax(logits.float(), -1).mean()
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    for p in params:
        p.grad = None
    del ids, logits, loss
    torch.cuda.empty_cache()  # hand the cached blocks back before vLLM looks at free memory
    return peak + adam
