"""A learner's step statistics: summed over micro-batches on the device and read back in one
transfer, then summed (the extremes: min or max) over the data-parallel learners."""

from __future__ import annotations

import math
from typing import Any

from rlactors.workers import collective

SUMMED = ("loss", "kl", "clip_low", "clip_high", "mismatch", "is_sum", "is_count", "entropy")
SUMMED += ("kept_entropy", "kept_tokens", "policy_loss")  # the entropy bonus's: over the tokens kept
# the importance weights' range; TRL's clip_ratio/low_min and high_max (over sequences)
EXTREMES = {"is_max": max, "is_min": min, "clip_low_min": min, "clip_high_max": max}


def of_micro_batch(
    out: Any, loss: Any, policy_loss: Any, raw: Any, behaviour: Any, real: Any, mask: Any, kept: Any, entropy: Any
) -> dict[str, Any]:
    """One micro-batch's statistics, 0-d tensors left on the device (one transfer per optimizer step):
    `out` the policy loss's output, `real` the policy's tokens, `mask` those the loss counts, `kept`
    those whose policy term counts. The importance weights' entries are `of_weights`'."""
    import torch

    real = real.bool()
    zero = loss.new_zeros(())
    lengths = mask.sum(-1)
    counted, counts = lengths > 0, lengths.clamp(min=1)
    entropy = entropy.detach()
    return {
        "mismatch": torch.where(real, (raw - behaviour).abs(), 0.0).sum(),
        "loss": loss.detach(),
        "policy_loss": policy_loss.detach(),  # without the entropy bonus
        "kl": (out.kl.detach() * mask).sum() if out.kl is not None else zero,
        "clip_low": out.clipped_low.sum(),
        "clip_high": out.clipped_high.sum(),
        "entropy": (entropy * mask).sum(),
        "kept_entropy": (entropy * kept).sum(),
        "kept_tokens": kept.sum(),
        # TRL's clip_ratio/low_min and high_max: of each sequence's share of clipped tokens
        "clip_low_min": torch.where(counted, out.clipped_low.sum(-1) / counts, math.inf).min(),
        "clip_high_max": torch.where(counted, out.clipped_high.sum(-1) / counts, -math.inf).max(),
        "is_sum": zero,
        "is_count": zero,
        "is_min": zero + math.inf,
        "is_max": zero - math.inf,
    }


def of_weights(weights: Any, token_level: bool, real: Any) -> dict[str, Any]:
    """The importance weights' sum, count and range over the tokens (or sequences) they weigh."""
    import torch

    w = weights.expand_as(real) if token_level else weights[:, 0]
    seen = real.bool() if token_level else torch.ones_like(w, dtype=torch.bool)
    return {
        "is_sum": torch.where(seen, w, 0.0).sum(),
        "is_count": seen.sum(),
        "is_min": torch.where(seen, w, math.inf).min(),
        "is_max": torch.where(seen, w, -math.inf).max(),
    }


def summed(stats: list[dict[str, Any]]) -> tuple[dict[str, float], list[float]]:
    """Micro-batch statistics (0-d device tensors) -> their sums and the extremes (each a maximum:
    a minimum negated), read back in one transfer."""
    import torch

    rows = [torch.stack([s[key].double() for s in stats]).sum() for key in SUMMED]
    for key, pick in EXTREMES.items():
        values = torch.stack([s[key] for s in stats]).double()
        rows.append(values.max() if pick is max else -values.min())
    values = torch.stack(rows).tolist()
    return dict(zip(SUMMED, values[: len(SUMMED)])), values[len(SUMMED) :]


def over_learners(sums: dict[str, float], extremes: list[float], device: Any) -> dict[str, float]:
    """The step's statistics over all learners (sums; extremes)."""
    import torch

    out = dict(sums)
    top = extremes
    if collective.world_size() > 1:
        device = device if torch.cuda.is_available() else "cpu"  # NCCL reduces on the GPU
        reduced = collective.all_reduce(torch.tensor([sums[k] for k in SUMMED], dtype=torch.float64, device=device))
        out.update(zip(SUMMED, reduced.tolist()))
        top = collective.all_reduce(torch.tensor(extremes, dtype=torch.float64, device=device), "max").tolist()
    for (key, pick), value in zip(EXTREMES.items(), top):
        out[key] = value if pick is max else -value
    return out
