"""`LoRAAdapter`: the record that carries a LoRA adapter from a learner to rollout workers.

It holds exactly what a PEFT adapter folder holds (the adapter's tensors under PEFT's saved names
and its `adapter_config.json`) plus the policy version, so it can be loaded into vLLM from memory
or written to disk as a folder that `PeftModel.from_pretrained` and `vllm serve --lora-modules`
take as they are.
"""

from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class LoRAAdapter:
    """A LoRA adapter at one policy version.

    tensors: PEFT names -> `lora_A.weight` [r, in_features] and `lora_B.weight` [out_features, r],
        on CPU, in the dtype the rollout engine computes in (bf16 on GPU).
    peft_config: PEFT's `LoraConfig.to_dict()`, JSON-safe.
    version: the policy version; 0 is the base model (no update yet).
    """

    version: int
    tensors: dict[str, torch.Tensor]
    peft_config: dict[str, Any]
    base_model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    flat: Any = field(default=None, repr=False, compare=False)  # 1-D buffer the tensors view, if any

    def __reduce__(self) -> tuple:
        """Pickles as one numpy byte buffer (Ray stores it out of band, zero-copy) plus the layout."""
        import torch

        flat, layout = (self.flat, _layout(self.tensors)) if self.flat is not None else flatten(self.tensors)
        dtype = str(flat.dtype).replace("torch.", "")
        data = flat.contiguous().view(torch.uint8).numpy()
        return _rebuild, (self.version, data, dtype, layout, self.peft_config, self.base_model, self.meta)

    @property
    def name(self) -> str:
        return f"rlactors-v{self.version}"

    @property
    def rank(self) -> int:
        return int(self.peft_config.get("r", 0))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def check(self, max_lora_rank: int | None = None) -> None:
        """Raises ValueError when the adapter is not one vLLM can serve."""
        if not self.tensors:
            raise ValueError("LoRAAdapter has no tensors: was get_peft_model applied to the model?")
        bad = [k for k in self.tensors if not (k.endswith("lora_A.weight") or k.endswith("lora_B.weight"))]
        if bad:
            raise ValueError(
                f"LoRAAdapter holds non-LoRA tensors {bad[:3]}: vLLM serves only lora_A/lora_B "
                "weights; set modules_to_save=None and use_dora=False in the LoRA config."
            )
        if self.peft_config.get("use_dora"):
            raise ValueError("use_dora=True: vLLM cannot serve DoRA adapters; set use_dora=False.")
        if max_lora_rank is not None and self.rank > max_lora_rank:
            raise ValueError(
                f"LoRA r={self.rank} exceeds max_lora_rank={max_lora_rank}; raise max_lora_rank "
                f"in from_pretrained or lower r."
            )

    def save(self, path: str) -> str:
        """Writes a standard PEFT adapter folder (safetensors + JSON, nothing pickled)."""
        os.makedirs(path, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.tensors.items()}
        save_tensors(tensors, os.path.join(path, ADAPTER_WEIGHTS), metadata={"format": "pt"})
        with open(os.path.join(path, ADAPTER_CONFIG), "w") as f:
            json.dump(self.peft_config, f, indent=2, sort_keys=True)
        return path

    @classmethod
    def load(cls, path: str, version: int = 0) -> LoRAAdapter:
        """Reads a PEFT adapter folder written by `save` or by PEFT's `save_pretrained`."""
        from safetensors.torch import load_file

        with open(os.path.join(path, ADAPTER_CONFIG)) as f:
            config = json.load(f)
        return cls(version=version, tensors=load_file(os.path.join(path, ADAPTER_WEIGHTS)), peft_config=config)


def peft_config_dict(peft_model: Any, adapter_name: str = "default") -> dict[str, Any]:
    """The adapter's `LoraConfig` as a JSON-safe dict (sets become sorted lists, enums strings)."""
    config = peft_model.peft_config[adapter_name].to_dict()
    return json.loads(json.dumps(config, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "value"):
        return value.value
    return str(value)


def export_adapter(peft_model: Any, version: int, dtype: torch.dtype | None = None) -> LoRAAdapter:
    """Copies the live adapter of `peft_model` to CPU in `dtype` (default: as trained).

    The tensors are joined on their device first, so the copy to CPU is one transfer, and the
    result is one flat buffer that Ray ships without per-tensor pickling (see `LoRAAdapter.__reduce__`).
    """
    flat, layout = _joined_state(peft_model, dtype)
    flat = _to_host(flat)
    return LoRAAdapter(
        version=version,
        tensors=unflatten(flat, layout),
        peft_config=peft_config_dict(peft_model),
        base_model=_base_model(peft_model),
        flat=flat,
    )


def _to_host(flat: torch.Tensor) -> torch.Tensor:
    """One device-to-host copy into page-locked memory, which the GPU's copy engine writes at full
    speed (pageable memory is staged through a driver buffer). torch caches the pinned block, so
    the next version's export reuses it once this adapter is gone."""
    import torch

    if not flat.is_cuda:
        return flat
    host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
    host.copy_(flat, non_blocking=True)
    torch.cuda.current_stream(flat.device).synchronize()
    return host


def _joined_state(peft_model: Any, dtype: torch.dtype | None) -> tuple[torch.Tensor, list]:
    """The adapter's tensors joined into one new 1-D buffer on their device (one join, then one
    cast), and its layout."""
    import torch

    state = adapter_state(peft_model)
    with torch.no_grad():
        target = dtype or next(iter(state.values())).dtype
        flat = torch.cat([v.reshape(-1) for v in state.values()]).to(target)
    return flat, _layout(state)


# model -> (its parameters' ids, the adapter's (PEFT name, live parameter)): see `adapter_state`
_LIVE: weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], list[tuple[str, Any]]]] = weakref.WeakKeyDictionary()


def adapter_state(peft_model: Any) -> dict[str, torch.Tensor]:
    """PEFT's `get_peft_model_state_dict(peft_model)`: the adapter's tensors under their saved names,
    as detached views of the live parameters. PEFT builds the whole model's state dict to find them
    (136 ms for SmolLM2 on the 2-core CPU, for every adapter sync); here it is built once, and again
    only when the model's parameters are other objects. Where PEFT's tensors are not the parameters
    themselves, PEFT's answer every time."""
    from peft import get_peft_model_state_dict

    params = list(peft_model.parameters())
    ids = tuple(map(id, params))
    held = _LIVE.get(peft_model)
    if held is not None and held[0] == ids:
        return {name: p.detach() for name, p in held[1]}
    state = get_peft_model_state_dict(peft_model)
    by_address = {(p.data_ptr(), p.shape): p for p in params}
    live = [(name, by_address.get((t.data_ptr(), t.shape))) for name, t in state.items()]
    if all(p is not None for _, p in live):
        _LIVE[peft_model] = (ids, live)
    return state


def _base_model(peft_model: Any) -> str:
    return getattr(peft_model.peft_config["default"], "base_model_name_or_path", "") or ""


@dataclass
class DeviceAdapter:
    """A LoRA adapter left in a learner's GPU memory and shared by CUDA IPC.

    A rollout worker on the same GPU opens `handle` and copies the buffer device to device: no
    copy to the host, and only this small record crosses Ray. The learner keeps the buffer alive
    for the last few versions (`LearnerWorker.share_adapter`).
    """

    version: int
    layout: list[tuple[str, tuple[int, ...]]]
    peft_config: dict[str, Any]
    base_model: str
    gpu: str  # the device's UUID: a handle opens only on the GPU it was made on
    handle: tuple  # torch's `reduce_tensor` of the flat buffer: (rebuild function, its arguments)

    @classmethod
    def share(cls, peft_model: Any, version: int, dtype: torch.dtype | None) -> tuple[DeviceAdapter, Any]:
        """The record and the buffer it points to (the caller keeps the buffer alive)."""
        import torch
        from torch.multiprocessing.reductions import reduce_tensor

        flat, layout = _joined_state(peft_model, dtype)
        torch.cuda.current_stream(flat.device).synchronize()  # the buffer is complete before anyone reads it
        record = cls(
            version=version,
            layout=layout,
            peft_config=peft_config_dict(peft_model),
            base_model=_base_model(peft_model),
            gpu=gpu_uuid(flat.device),
            handle=reduce_tensor(flat),
        )
        return record, flat

    def open(self) -> LoRAAdapter:
        """The adapter as views of the learner's buffer (valid while the learner keeps it)."""
        rebuild, args = self.handle
        flat = rebuild(*args)
        return LoRAAdapter(
            version=self.version,
            tensors=unflatten(flat, self.layout),
            peft_config=self.peft_config,
            base_model=self.base_model,
            flat=flat,
        )


def gpu_uuid(device: Any = None) -> str | None:
    """The UUID of `device` (default: the current CUDA device); None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device()).uuid)


def every_worker_beside_a_learner(
    rollouts: list[tuple[str, str | None]], learners: list[tuple[str, str | None]]
) -> bool:
    """Whether every rollout worker's (node, GPU UUID) is also a learner's: CUDA IPC can then serve all."""
    places = set(learners)
    return bool(rollouts) and all(gpu is not None and (node, gpu) in places for node, gpu in rollouts)


def pick_for_gpu(adapters: list[DeviceAdapter], gpu: str | None) -> DeviceAdapter:
    """The record made on `gpu`; a clear error when no learner shares this worker's GPU."""
    for adapter in adapters:
        if adapter.gpu == gpu:
            return adapter
    raise RuntimeError(
        f"no learner shares GPU {gpu} (learners on {[a.gpu for a in adapters]}): set adapter_sync: object_store"
    )


def flatten(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[str, tuple[int, ...]]]]:
    """One 1-D buffer holding every tensor (one dtype) and the (name, shape) layout to cut it again."""
    import torch

    flat = torch.cat([t.reshape(-1) for t in tensors.values()]) if tensors else torch.empty(0)
    return flat, _layout(tensors)


def _layout(tensors: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(t.shape)) for name, t in tensors.items()]


def unflatten(flat: torch.Tensor, layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """Views into `flat`, one per (name, shape), in order."""
    import math

    out, offset = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        out[name] = flat[offset : offset + size].view(shape)
        offset += size
    return out


def _rebuild(
    version: int, flat: Any, dtype: str, layout: list, peft_config: dict, base_model: str, meta: dict
) -> LoRAAdapter:
    import warnings

    import torch

    with warnings.catch_warnings():  # Ray hands over a read-only buffer; vLLM gets a copy (engine.load_adapter)
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.from_numpy(flat)
    flat = raw.view(getattr(torch, dtype))
    tensors = unflatten(flat, [(n, tuple(s)) for n, s in layout])
    return LoRAAdapter(
        version=version, tensors=tensors, peft_config=peft_config, base_model=base_model, meta=meta, flat=flat
    )


def save_tensors(tensors: dict[str, Any], path: str, metadata: dict[str, str] | None = None) -> None:
    """safetensors' `save_file`, with its I/O failures (a full disk) raised as the `OSError` they are."""
    import errno
    import re

    from safetensors.torch import save_file

    try:
        save_file(tensors, path, metadata=metadata)
    except Exception as err:  # SafetensorError is not an OSError
        found = re.search(r"os error (\d+)", str(err))
        if not found:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code) if code in errno.errorcode else str(err), path) from err
