"""Data-parallel learners: one `torch.distributed` group over the learner actors (gloo on CPU,
NCCL on GPU). Only the LoRA parameters' gradients travel: one flat all-reduce per optimizer step.

Rank 0 picks the rendezvous address; every learner joins; rank 0's fresh adapter is broadcast so
all ranks start from the same weights and, given the same summed gradients, stay identical.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any


def rendezvous_address() -> str:
    """This node's IP and a free TCP port, as "ip:port" (called on rank 0)."""
    import ray

    ip = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return f"{ip}:{port}"


def join(address: str, rank: int, world_size: int, timeout_s: float = 300.0) -> str:
    """Joins the learners' process group; returns the backend."""
    import datetime

    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method=f"tcp://{address}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return backend


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce(tensor: Any, op: str = "sum") -> Any:
    """`tensor` summed ("sum") or element-wise maximised ("max") over the learners, in place
    (a no-op with one learner); returns it."""
    import torch.distributed as dist

    if world_size() > 1:
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def all_gather_values(values: Any) -> Any:
    """Every learner's 1-D `values` (lengths may differ), joined in rank order (no gradient)."""
    import torch
    import torch.distributed as dist

    values = values.detach()
    count = torch.tensor([values.numel()], device=values.device)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    longest = int(max(counts))
    padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(n)] for g, n in zip(gathered, counts)])


class MicroBatchGather:
    """Joins a micro-batch's values with those of the other learners' micro-batch of the same index
    (as TRL gathers over processes), or passes them through (one learner, or not `wanted`). A
    learner with fewer micro-batches than another makes up the difference with `finish`, so that
    every learner takes part in every gather."""

    def __init__(self, count: int, device: Any, wanted: bool):
        import torch

        self.on = wanted and world_size() > 1
        self.device = device
        self.left = int(all_reduce(torch.tensor([count], device=device), "max")) if self.on else 0

    def __call__(self, values: Any) -> Any:
        if not self.on:
            return values
        self.left -= 1
        return all_gather_values(values)

    def finish(self) -> None:
        import torch

        while self.on and self.left > 0:
            self(torch.empty(0, device=self.device))


def all_reduce_grads(params: Iterable[Any]) -> None:
    """Replaces each parameter's gradient by the sum over learners, in one flat all-reduce."""
    import torch

    if world_size() == 1:
        return
    params = list(params)
    for p in params:
        if p.grad is None:  # a learner with no samples this step still takes part
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    _unflatten(all_reduce(torch.cat([g.reshape(-1) for g in grads])), grads)


def broadcast_params(params: Iterable[Any]) -> None:
    """Copies rank 0's parameters to every learner."""
    import torch
    import torch.distributed as dist

    if world_size() == 1:
        return
    params = list(params)
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        dist.broadcast(flat, src=0)
        _unflatten(flat, params)


def _unflatten(flat: Any, tensors: list[Any]) -> None:
    """Copies consecutive slices of `flat` back into `tensors`, in order."""
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
