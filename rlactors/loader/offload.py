"""Offloaded activation checkpointing (`use_gradient_checkpointing="unsloth"`).

Plain checkpointing keeps each decoder layer's input on the GPU until the backward pass
recomputes the layer from it. Here that input waits in pinned host memory instead: it is copied
out (asynchronously, on the compute stream) as the layer runs forward without saving anything,
and copied back when the backward pass reaches the layer, which then runs again with gradients.
What stays on the GPU between the passes is nothing per layer, at the price of one copy each way
per layer; Unsloth's "unsloth" mode works the same way.

Set as each transformers `GradientCheckpointingLayer`'s `_gradient_checkpointing_func`, which the
layer calls as `func(partial(layer.__call__, **kwargs), hidden_states)`. Like any re-entrant
checkpoint it needs the layer input to require grad (`enable_input_require_grads`), or the
backward pass never reaches it. Layers must be deterministic (LoRA dropout 0) to be recomputed:
the random state is not replayed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def offloaded_checkpoint(run: Callable[..., Any], hidden: torch.Tensor, *args: Any) -> Any:
    """`run(hidden, *args)` with `hidden` kept in host memory until the backward pass."""
    if not torch.is_grad_enabled():
        return run(hidden, *args)
    return _OffloadedLayer.apply(run, hidden, *args)


class _OffloadedLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run: Callable[..., Any], hidden: torch.Tensor, *args: Any) -> Any:
        kind = hidden.device.type
        ctx.run, ctx.args, ctx.device = run, args, hidden.device
        ctx.autocast = (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
        ctx.host = hidden.detach().to("cpu", non_blocking=True)  # pinned: the copy overlaps the layer
        with torch.no_grad():
            return run(hidden, *args)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple:
        hidden = ctx.host.to(ctx.device, non_blocking=True).requires_grad_()
        ctx.host = None
        enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(ctx.device.type, dtype=dtype, enabled=enabled):
            out = ctx.run(hidden, *ctx.args)
        outs = out if isinstance(out, tuple) else (out,)
        pairs = [
            (o, g) for o, g in zip(outs, grads) if isinstance(o, torch.Tensor) and o.requires_grad and g is not None
        ]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return (None, hidden.grad) + (None,) * len(ctx.args)
