"""Dummy training passes on a learner's GPU: what it needs of the GPU to train at the configured
sizes (for `gpu_memory_utilization: auto`, which `rlactors.distributed.memory` turns into vLLM's
share), and a short warm-up that loads the kernels the first step would otherwise load."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rlactors.core import algorithm
from rlactors.core.records import MemoryNeed
from rlactors.workers import model_options

if TYPE_CHECKING:
    from rlactors.workers.learner import LearnerWorker


def measure_learner(learner: LearnerWorker) -> MemoryNeed | None:
    """The learner's `MemoryNeed` at the configured sizes; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    cfg = learner.config
    model = learner.model
    params = [p for p in model.parameters() if p.requires_grad]
    adapter = sum(p.numel() * p.element_size() for p in params)
    adam = 2 * adapter  # exp_avg and exp_avg_sq, made at the first step
    rows, length = cfg.micro_batch_size, update_length(cfg)
    ids = torch.randint(0, model.config.vocab_size, (rows, length), device=learner.device)
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    forward_backward(learner, ids, cfg.max_completion_length + 1, lambda logits: logits.float().log_softmax(-1).mean())
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    model.zero_grad(set_to_none=True)
    del ids
    torch.cuda.empty_cache()  # hand the cached blocks back before vLLM looks at free memory
    free, total = torch.cuda.mem_get_info(learner.device)
    kept = adam + adapter  # AdamW's moments and the gradients stay between updates
    return MemoryNeed(extra_bytes=peak - resident + adam, free_bytes=free, total_bytes=total, kept_bytes=kept)


def warm_up(learner: LearnerWorker) -> None:
    """One forward and backward pass of two dummy sequences of the update's length, padded on the
    left and masked as rollouts are, so that the first step does not pay for the GPU kernels loaded
    or built on first use (1-6 s measured on an H200). Two rows keep it small beside vLLM's start.
    Leaves no trace: no gradients, no optimizer step, the random generators as they were."""
    import torch

    cfg = learner.config
    keep = cfg.max_completion_length + 1
    length = update_length(cfg)
    ids = torch.zeros((2, length), dtype=torch.long, device=learner.device)
    mask = torch.ones_like(ids)
    mask[0, : cfg.max_prompt_length // 2] = 0  # a shorter prompt, padded on the left
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.random.fork_rng(devices=[learner.device] if learner.device.type == "cuda" else []):
        forward_backward(
            learner,
            ids,
            keep,
            lambda logits: algorithm.selective_logprobs(logits[:, :-1], ids[:, 1 - keep :], cfg.temperature).sum(),
            attention_mask=mask,
            position_ids=positions,
        )
    learner.model.zero_grad(set_to_none=True)


def update_length(cfg: Any) -> int:
    """The longest row an update can have: prompt and completion at most, each padded to `pad_to_multiple_of`."""
    multiple = cfg.pad_to_multiple_of or 1
    return sum(n + -n % multiple for n in (cfg.max_prompt_length, cfg.max_completion_length))


def forward_backward(learner: LearnerWorker, ids: Any, keep: int, loss_of: Callable[[Any], Any], **inputs: Any) -> None:
    """The model's forward over `ids` (and `inputs`: mask, positions) as an update runs it (mixed
    precision, the last `keep` logits), then backward from `loss_of(logits)`; the gradients are
    left to the caller."""
    model_options.begin_pass(learner.config)
    with learner.mixed_precision():
        loss = loss_of(learner.model(input_ids=ids, logits_to_keep=keep, use_cache=False, **inputs).logits)
    loss.backward()
