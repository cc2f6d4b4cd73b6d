"""A learner's step statistics: summed over micro-batches on the device and read back in one
transfer, then summed (the importance weights' extremes: maxed) over the data-parallel learners."""

from __future__ import annotations

from typing import Any

from rlactors.workers import collective

SUMMED = ("loss", "kl", "clip_low", "clip_high", "mismatch", "is_sum", "is_count")


def summed(stats: list[dict[str, Any]]) -> tuple[dict[str, float], list[float]]:
    """Micro-batch statistics (0-d device tensors) -> their sums and [max, -min] importance
    weight, read back in one transfer."""
    import torch

    rows = [torch.stack([s[key].double() for s in stats]).sum() for key in SUMMED]
    rows.append(torch.stack([s["is_max"] for s in stats]).max().double())
    rows.append(-torch.stack([s["is_min"] for s in stats]).min().double())
    values = torch.stack(rows).tolist()
    return dict(zip(SUMMED, values[: len(SUMMED)])), values[len(SUMMED) :]


def over_learners(sums: dict[str, float], extremes: list[float], device: Any) -> dict[str, float]:
    """The step's statistics over all learners (sums; the importance weights' min and max)."""
    import torch

    out = dict(sums)
    top = extremes
    if collective.world_size() > 1:
        device = device if torch.cuda.is_available() else "cpu"  # NCCL reduces on the GPU
        reduced = collective.all_reduce(torch.tensor([sums[k] for k in SUMMED], dtype=torch.float64, device=device))
        out.update(zip(SUMMED, reduced.tolist()))
        top = collective.all_reduce(torch.tensor(extremes, dtype=torch.float64, device=device), "max").tolist()
    out["is_max"], out["is_min"] = top[0], -top[1]
    return out
