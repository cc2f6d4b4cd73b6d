"""What a learner needs of its GPU to train at the configured sizes (for `gpu_memory_utilization:
auto`, which `rlactors.distributed.memory` turns into vLLM's share)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlactors.core.records import MemoryNeed

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
    kept = adam + adapter  # AdamW's moments and the gradients stay between updates
    return MemoryNeed(extra_bytes=peak - resident + adam, free_bytes=free, total_bytes=total, kept_bytes=kept)
