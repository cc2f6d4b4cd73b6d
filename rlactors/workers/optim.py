"""The learner's optimizer and learning-rate schedule, from TRL's fields (`optim`, `adam_*`,
`lr_scheduler_type`, `warmup_steps`).

`adamw_torch_fused` (the default, as transformers') and `adamw_torch` are torch's AdamW, fused on
CUDA or not; `adamw_8bit` / `adamw_bnb_8bit`, `paged_adamw_8bit` and `paged_adamw_32bit` are
bitsandbytes' (CUDA only: on CPU one warning, then torch's AdamW, so a GPU script runs unchanged on
a laptop).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig

BITSANDBYTES = {
    "adamw_8bit": "AdamW8bit",
    "adamw_bnb_8bit": "AdamW8bit",
    "paged_adamw_8bit": "PagedAdamW8bit",
    "paged_adamw_32bit": "PagedAdamW32bit",
}


def make_optimizer(cfg: GRPOConfig, params: list[Any]) -> Any:
    """AdamW over `params` as `cfg.optim` names it."""
    import torch

    kwargs = dict(
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay,
    )
    name = BITSANDBYTES.get(cfg.optim)
    if name is not None:
        on_cuda = bool(params) and params[0].is_cuda
        try:
            import bitsandbytes
        except ImportError:
            bitsandbytes = None
        if on_cuda and bitsandbytes is not None:
            return getattr(bitsandbytes.optim, name)(params, **kwargs)
        why = "no CUDA device" if not on_cuda else "bitsandbytes is not installed (pip install 'rlactors[gpu]')"
        warnings.warn(
            f"rlactors: optim={cfg.optim!r} needs bitsandbytes on CUDA ({why}): training with torch's AdamW instead",
            UserWarning,
            stacklevel=2,
        )
    return torch.optim.AdamW(
        params, fused=cfg.optim == "adamw_torch_fused" and bool(params) and params[0].is_cuda, **kwargs
    )


def schedule(cfg: GRPOConfig) -> Callable[[int], float]:
    """lr multiplier by optimizer step: linear warm-up, then constant / linear / cosine decay (to
    `min_lr_rate`), as transformers' schedulers of those names (`cosine_with_min_lr` for the floor),
    except that the warm-up's first step has 1/warmup of the lr, not 0 (no step is spent unchanged)."""
    total = max((cfg.max_steps or 1) * cfg.num_iterations * cfg.num_mini_batches, 1)
    warmup = int(cfg.warmup_steps) if cfg.warmup_steps >= 1 else math.ceil(cfg.warmup_steps * total)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if cfg.lr_scheduler_type == "linear":
            return 1.0 - progress
        if cfg.lr_scheduler_type == "cosine":
            return cfg.min_lr_rate + (1.0 - cfg.min_lr_rate) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor
