"""Where an installed adapter's tensors sit in vLLM's LoRA slots, so that a new version is copied
straight in. Plain torch: `rlactors.engine.vllm_engine` (the one module that imports vLLM) hands in vLLM's
LoRA manager and model; this module only reads their tensors.

vLLM builds an adapter's first version from views of one private buffer (`LoRAModel`) and
`set_lora` copies each into a slot view of its layers' stacked LoRA tensors. `learn` pairs every
adapter tensor with its slot view by storage address and checks every pair; `Slots.copy_in` then
does for a new version what vLLM would, with multi-tensor copy kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class Slots:
    """An installed in-memory adapter: its private buffer, of which vLLM's `LoRAModel` holds views,
    and the slot view each of those views was copied into (in the adapter's order)."""

    lora_id: int
    index: int  # the slot
    layout: list  # [(name, shape)] of the flat buffer
    peft_config: dict
    private: torch.Tensor  # the flat buffer vLLM's LoRAModel was built on
    sources: list  # views of `private`, one per adapter tensor
    targets: list  # the slot view each source is copied into
    scaled: list  # the sources that vLLM holds multiplied by `scale` (its lora_B, alpha / r folded in)
    scale: float

    def takes(self, layout: list, peft_config: dict, slot_ids: list) -> bool:
        """Whether a version with `layout` and `peft_config` can be copied in: the same adapter,
        still in its slot (`slot_ids`: vLLM's lora id per slot)."""
        return layout == self.layout and peft_config == self.peft_config and slot_ids[self.index] == self.lora_id

    def copy_in(self, flat: torch.Tensor) -> None:
        """The new version into the private buffer too, so that a re-activation of vLLM's LoRAModel
        (after an eviction from its slot) copies this version and not the first."""
        import torch

        with torch.no_grad():
            self.private.copy_(flat)
            if self.scaled:
                torch._foreach_mul_(self.scaled, self.scale)
            torch._foreach_copy_(self.targets, self.sources)


def learn(
    manager: Any, lora: Any, private: torch.Tensor, tensors: dict, unscaled: dict, scale: float, peft_config: dict
) -> Slots | None:
    """The slots of the just activated `lora` (built on views `tensors` of `private`; `unscaled`:
    those tensors before vLLM folded `scale` into lora_B). None, so that every version is
    installed anew, where any pair does not hold what a direct copy would put there."""
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
    return Slots(
        lora_id=lora.id,
        index=index,
        layout=[(n, tuple(tensors[n].shape)) for n in names],
        peft_config=dict(peft_config),
        private=private,
        sources=[tensors[n] for n in names],
        targets=[pairs[n][1] for n in names],
        scaled=[tensors[n] for n in b_names] if folded else [],
        scale=scale,
    )


def copy_into_slots(worker: Any, flat: torch.Tensor, layout: list, peft_config: dict) -> int | None:
    """Runs inside the vLLM worker: copies a new version into the adapter installed before, as
    vLLM would (lora_B scaled), and returns its id; None when none has this layout and config."""
    slots = getattr(worker, "_rlactors_slots", None)
    if slots is None or not slots.takes(layout, peft_config, lora_manager(worker).lora_index_to_id):
        return None
    slots.copy_in(flat)
    return slots.lora_id


def unstacked_mapper(manager: Any) -> Any:
    # Keep the model's renames but not its qkv/gate_up fusion maps: PEFT tensors name q/k/v apart.
    mapper = getattr(getattr(manager, "model", None), "hf_to_vllm_mapper", None)
    if mapper is None:
        return None
    for method in ("get_unstacked_mapper", "get_rename_mapper"):
        if hasattr(mapper, method):
            return getattr(mapper, method)()
    return mapper


def lora_manager(worker: Any) -> Any:
    """The vLLM worker's LoRA model manager: its adapters, slots and LoRA layers."""
    return worker.model_runner.lora_manager._adapter_manager
