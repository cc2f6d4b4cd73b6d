"""A learner's step statistics: summed over micro-batches on the device and read back in one
transfer, then summed (the extremes: min or max) over the data-parallel learners."""

from __future__ import annotations

from typing import Any

from rlactors.workers import collective

SUMMED = ("loss", "kl", "clip_low", "clip_high", "mismatch", "is_sum", "is_count", "entropy")
SUMMED += ("kept_entropy", "kept_tokens", "policy_loss")  # the entropy bonus's: over the tokens kept
# the importance weights' range; TRL's clip_ratio/low_min and high_max (over sequences)
EXTREMES = {"is_max": max, "is_min": min, "clip_low_min": min, "clip_high_max": max}


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
