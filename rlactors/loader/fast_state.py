"""What `from_pretrained` attaches to a model: the vLLM engine and the fast methods.

`fast_generate`, `load_lora` and `save_lora` are bound to the model object (as in Unsloth), and
re-bound to the PEFT wrapper by `get_peft_model`, so `model.load_lora()` always exports the
adapter of the model it is called on.
"""

from __future__ import annotations

import copy
import types
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlactors.core.adapter import LoRAAdapter, export_adapter
from rlactors.loader import export

STATE_ATTR = "_rlactors_state"


@dataclass
class FastState:
    engine: Any  # vllm.LLM or None
    tokenizer: Any
    max_lora_rank: int
    max_seq_length: int
    model_path: str
    dtype: Any  # torch dtype the engine and the model compute in
    load_in_4bit: bool = False
    gpu_memory_utilization: float = 0.5  # vLLM's share, as given to from_pretrained
    gradient_checkpointing: bool | str = False  # as given to from_pretrained, then get_peft_model
    adapter_version: int = 0  # version of the adapter vLLM holds from memory; 0: none yet
    next_lora_id: int = 1
    loaded: LoRAAdapter | None = None  # a private copy of what vLLM holds, to detect changes
    loaded_request: Any = None

    def take_lora_id(self) -> int:
        lora_id, self.next_lora_id = self.next_lora_id, self.next_lora_id + 1
        return lora_id


def state_of(model: Any) -> FastState | None:
    return getattr(model, STATE_ATTR, None)


def attach(model: Any, state: FastState) -> None:
    """Stores `state` on `model` and binds `vllm_engine` and the fast methods to it."""
    object.__setattr__(model, STATE_ATTR, state)
    if state.engine is not None:
        object.__setattr__(model, "vllm_engine", state.engine)
    methods = {
        "fast_generate": fast_generate,
        "load_lora": load_lora,
        "save_lora": save_lora,
        "save_pretrained_merged": export.save_pretrained_merged,
        "push_to_hub_merged": export.push_to_hub_merged,
        "save_pretrained_gguf": export.save_pretrained_gguf,
    }
    for name, fn in methods.items():
        object.__setattr__(model, name, types.MethodType(fn, model))


def _engine(model: Any, method: str) -> Any:
    state = state_of(model)
    if state is None or state.engine is None:
        raise RuntimeError(
            f"model.{method} needs the vLLM engine: load the model with "
            "FastLanguageModel.from_pretrained(..., fast_inference=True)."
        )
    return state.engine


def fast_generate(
    model: Any,
    prompts: str | Sequence[Any],
    sampling_params: Any = None,
    lora_request: Any = None,
    use_tqdm: bool = False,
) -> list:
    """vLLM generation; `prompts` are strings or token-id lists. Returns vLLM's `RequestOutput`s."""
    from rlactors.engine import vllm_engine

    llm = _engine(model, "fast_generate")
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    limit = state_of(model).max_seq_length
    if isinstance(sampling_params, list):
        sampling_params = [_within(p, limit) for p in sampling_params]
    else:
        sampling_params = _within(sampling_params, limit)
    return vllm_engine.generate(llm, prompts, sampling_params, lora_request, use_tqdm=use_tqdm)


def _within(params: Any, limit: int) -> Any:
    """`params` with max_tokens clamped to max_seq_length (with a warning): vLLM would stop there anyway,
    silently, and a completion cannot be longer than the context it lives in."""
    if params is None or getattr(params, "max_tokens", None) is None or params.max_tokens <= limit:
        return params
    warnings.warn(
        f"fast_generate: sampling_params.max_tokens={params.max_tokens} exceeds max_seq_length={limit} given to "
        f"from_pretrained; clamped to {limit} (the prompt's tokens count against it too: raise max_seq_length "
        "for longer completions)",
        UserWarning,
        stacklevel=3,
    )
    params = params.clone() if hasattr(params, "clone") else copy.copy(params)
    params.max_tokens = limit
    return params


def load_lora(model: Any, path: str | None = None) -> Any:
    """A `LoRARequest` for the adapter as it is in memory now (`path=None`), or for a PEFT folder.

    From memory the tensors go straight into vLLM's worker; a new adapter version is made only
    when the weights changed since the last call, so calling it every step is cheap. A new version
    is copied into the LoRA slots of the one before (same id), so requests returned earlier
    generate with the newest weights too.
    """
    from rlactors.engine import vllm_engine

    llm = _engine(model, "load_lora")
    state = state_of(model)
    if path is not None:
        lora_id = state.take_lora_id()
        return vllm_engine.folder_request(f"rlactors-folder-{lora_id}", lora_id, path)
    if not hasattr(model, "peft_config"):
        raise RuntimeError("model.load_lora() needs a LoRA adapter: call FastLanguageModel.get_peft_model first.")
    adapter = export_adapter(model, version=state.adapter_version + 1, dtype=state.dtype)
    if state.loaded is not None and _same_tensors(state.loaded, adapter):
        return state.loaded_request
    adapter.check(state.max_lora_rank)
    request = vllm_engine.load_adapter(llm, adapter, lora_id=state.take_lora_id())
    state.adapter_version = adapter.version
    state.loaded, state.loaded_request = adapter, request
    return request


def _same_tensors(a: LoRAAdapter, b: LoRAAdapter) -> bool:
    import torch

    return a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def save_lora(model: Any, path: str) -> str:
    """Writes the adapter as a standard PEFT folder (`adapter_model.safetensors`, `adapter_config.json`)."""
    if not hasattr(model, "peft_config"):
        raise RuntimeError("model.save_lora() needs a LoRA adapter: call FastLanguageModel.get_peft_model first.")
    return export_adapter(model, version=0).save(path)
