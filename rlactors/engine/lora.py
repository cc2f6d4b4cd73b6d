"""LoRA adapters from memory into vLLM: installed from a tensor buffer, then updated in place.

The first version of an adapter is built by vLLM (`LoRAModel.from_lora_tensors`) from views of one
device copy of its flat buffer and activated in a LoRA slot; where each tensor landed is learned
then. Every later version with the same layout is copied straight into those slots.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlactors.adapter import LoRAAdapter

if TYPE_CHECKING:
    import torch
    from vllm import LLM
    from vllm.lora.request import LoRARequest

MEMORY_PATH_PREFIX = "rlactors-memory://"


def memory_request(name: str, lora_id: int) -> "LoRARequest":
    """A request for an adapter already installed by `load_adapter` (its path is never read)."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, lora_id, MEMORY_PATH_PREFIX + name)


def folder_request(name: str, lora_id: int, path: str) -> "LoRARequest":
    """A request that makes vLLM load a PEFT adapter folder the usual way."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, lora_id, os.path.abspath(path))


def load_adapter(llm: "LLM", adapter: LoRAAdapter, lora_id: int) -> "LoRARequest":
    """Installs `adapter` into every worker of `llm` from memory; returns the request to generate with.

    A new version of the adapter installed before (same tensors' names and shapes, same PEFT
    config) is copied straight into the LoRA slots vLLM holds for it, under that adapter's id:
    a few multi-tensor copy kernels, nothing rebuilt. Otherwise vLLM builds its LoRA weights from
    views of one private device copy of the adapter's flat buffer (vLLM scales lora_B in place),
    under `lora_id`, and earlier in-memory adapters are removed. Either way the prefix cache is
    reset, so no block computed under an older version is served, and earlier requests now
    generate with this version. The engine must run in-process with one worker (tensor
    parallel 1), as rollout workers do.
    """
    from rlactors.adapter import flatten
    from rlactors.engine import is_cuda

    device = "cuda" if is_cuda() else "cpu"
    flat = adapter.flat if adapter.flat is not None else flatten(adapter.tensors)[0]
    layout = [(name, tuple(t.shape)) for name, t in adapter.tensors.items()]
    on_device = flat.to(device)
    held = llm.collective_rpc(_copy_into_slots, args=(on_device, layout, adapter.peft_config))
    if None in held:
        private = on_device.clone() if on_device is flat else on_device  # vLLM scales it in place
        llm.collective_rpc(_install_lora, args=(lora_id, private, layout, adapter.peft_config, device))
        held = [lora_id]
    llm.reset_prefix_cache()
    return memory_request(adapter.name, held[0])


@dataclass
class _Slots:
    """An installed in-memory adapter: its private buffer, of which vLLM's `LoRAModel` holds views,
    and the slot views `set_lora` copied those into (learned at install, in the adapter's order)."""

    lora_id: int
    index: int  # the slot
    layout: list  # [(name, shape)] of the flat buffer
    peft_config: dict
    private: "torch.Tensor"  # the flat buffer vLLM's LoRAModel was built on
    sources: list  # views of `private`, one per adapter tensor
    targets: list  # the slot view each source is copied into
    scaled: list  # the sources that vLLM holds multiplied by `scale` (its lora_B, alpha / r folded in)
    scale: float


def _copy_into_slots(worker: Any, flat: "torch.Tensor", layout: list, peft_config: dict) -> int | None:
    """Runs inside the vLLM worker: copies a new version into the adapter installed before, as
    vLLM would (lora_B scaled), and returns its id; None when none has this layout and config."""
    import torch

    slots = getattr(worker, "_rlactors_slots", None)
    manager = worker.model_runner.lora_manager._adapter_manager
    if (slots is None or slots.layout != layout or slots.peft_config != peft_config
            or manager.lora_index_to_id[slots.index] != slots.lora_id):
        return None
    with torch.no_grad():
        # The private buffer too, so that a re-activation of this LoRAModel (after an eviction from
        # its slot) copies this version and not the first.
        slots.private.copy_(flat)
        if slots.scaled:
            torch._foreach_mul_(slots.scaled, slots.scale)
        torch._foreach_copy_(slots.targets, slots.sources)
    return slots.lora_id


def _install_lora(worker: Any, lora_id: int, private: "torch.Tensor", layout: list, peft_config: dict,
                  device: str) -> int:
    """Runs inside the vLLM worker: builds a `LoRAModel` from views of `private` on `device`,
    activates it in place of earlier adapters, and learns its slots for the next version."""
    from vllm.lora.peft_helper import PEFTHelper

    from rlactors.adapter import unflatten

    try:
        from vllm.lora.lora_model import LoRAModel
    except ImportError:  # older layout
        from vllm.lora.models import LoRAModel

    worker_manager = worker.model_runner.lora_manager
    manager = worker_manager._adapter_manager
    helper = PEFTHelper.from_dict(dict(peft_config))
    helper.validate_legal(worker_manager.lora_config)
    candidates = dict(
        device=device,
        dtype=worker_manager.lora_config.lora_dtype,
        model_vocab_size=worker_manager.vocab_size,
        weights_mapper=_unstacked_mapper(manager),
    )
    accepted = inspect.signature(LoRAModel.from_lora_tensors).parameters
    tensors = unflatten(private, layout)
    unscaled = private.clone()  # vLLM scales lora_B in place
    lora = LoRAModel.from_lora_tensors(
        lora_id, tensors, helper, **{k: v for k, v in candidates.items() if k in accepted}
    )
    for old_id in list(manager.list_adapters()):
        manager.remove_adapter(old_id)
    manager.add_adapter(lora)
    manager.activate_adapter(lora_id)
    worker._rlactors_slots = _learn_slots(manager, lora, private, tensors, unflatten(unscaled, layout),
                                          helper.vllm_lora_scaling_factor, peft_config)
    return len(lora.loras)


def _learn_slots(manager: Any, lora: Any, private: "torch.Tensor", tensors: dict, unscaled: dict, scale: float,
                 peft_config: dict) -> _Slots | None:
    """Pairs each adapter tensor with the slot view `set_lora` copied it into, by storage address
    (vLLM's LoRA weights are views of `private`), and checks that every slot holds what a direct
    copy would put there. None, so that every version is installed anew, where any does not."""
    import torch

    index = manager.lora_index_to_id.index(lora.id)
    by_address = {t.data_ptr(): name for name, t in tensors.items()}
    pairs: dict[str, tuple[str, Any]] = {}
    for module_name, module in manager.modules.items():
        weights = manager._get_lora_layer_weights(lora, module_name)
        for kind in ("lora_a", "lora_b"):
            held = getattr(weights, kind, None) if weights else None
            for slot, tensor in zip(getattr(module, f"{kind}_stacked", ()), held if isinstance(held, list) else [held]):
                if tensor is None:
                    continue
                name = by_address.get(tensor.data_ptr())
                if name is None or tensor.shape != tensors[name].shape:
                    return None
                pairs[name] = (kind, slot[index, 0, : tensor.shape[0], : tensor.shape[1]])
    if pairs.keys() != tensors.keys():
        return None
    b_names = [name for name, (kind, _) in pairs.items() if kind == "lora_b"]
    # vLLM 0.26 and 0.32 fold alpha / r into lora_B in place; a zero lora_B (as PEFT starts) cannot
    # show whether this vLLM does, so then the next version is installed anew and decides.
    folded = scale != 1 and any(not torch.equal(tensors[n], unscaled[n]) for n in b_names)
    if scale != 1 and not folded and not all(unscaled[n].count_nonzero() for n in b_names):
        return None
    expected = {n: unscaled[n] * scale if folded and n in b_names else unscaled[n] for n in tensors}
    if not all(torch.equal(target, expected[n].to(target.dtype)) for n, (_, target) in pairs.items()):
        return None
    names = list(tensors)
    return _Slots(lora_id=lora.id, index=index, layout=[(n, tuple(tensors[n].shape)) for n in names],
                  peft_config=dict(peft_config), private=private, sources=[tensors[n] for n in names],
                  targets=[pairs[n][1] for n in names], scaled=[tensors[n] for n in b_names] if folded else [],
                  scale=scale)


def _unstacked_mapper(manager: Any) -> Any:
    # Keep the model's renames but not its qkv/gate_up fusion maps: PEFT tensors name q/k/v apart.
    mapper = getattr(getattr(manager, "model", None), "hf_to_vllm_mapper", None)
    if mapper is None:
        return None
    for method in ("get_unstacked_mapper", "get_rename_mapper"):
        if hasattr(mapper, method):
            return getattr(mapper, method)()
    return mapper
