"""The one module that imports vLLM: engine creation, sampling, log-probs and LoRA from memory
(a new version copied into vLLM's LoRA slots by `rlactors.engine.lora_slots`; vLLM-CPU's LoRA ops
replaced by `rlactors.engine.cpu_lora_ops`; the sampler's warm-up by `rlactors.engine.warmup`; all
three plain Python, handed vLLM's objects from here).

Works with vLLM >= 0.26 on CUDA and vLLM-CPU 0.32. Every difference between those versions is
handled here, so the rest of rlactors never imports vLLM.

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the LoRA tensors handed to
``load_adapter`` then reach vLLM's worker as the same Python objects, with no serialisation.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rlactors.core.adapter import LoRAAdapter
from rlactors.engine import cpu_lora_ops, lora_slots
from rlactors.engine.samples import Sample, Turn, token_logprobs
from rlactors.engine.spec import EngineSpec, device_defaults, is_cuda
from rlactors.engine.warmup import sampler_warmup
from rlactors.engine.worker_env import triton_cache_dir

if TYPE_CHECKING:
    import torch
    from vllm import LLM
    from vllm.lora.request import LoRARequest

# Set here, before vLLM reads them, and nowhere else in rlactors.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# vLLM hashes this variable into its compile cache's key: a run with another value compiles again
# (~20 s on an H200). Workers get vLLM's lines by `log_to_stderr` instead.
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
# vLLM 0.26 builds FlashInfer's sampling kernels with nvcc at start on a fresh machine (90 s of
# the 246 s to the first step on an H200). They serve only top-k/top-p requests; vLLM's own
# top-k/top-p path does without the build.
os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")

MEMORY_PATH_PREFIX = "rlactors-memory://"


def __getattr__(name: str) -> Any:
    # `vLLMSamplingParams` is vLLM's own SamplingParams class, imported on first use.
    if name == "vLLMSamplingParams":
        from vllm import SamplingParams

        return SamplingParams
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def vllm_version() -> str | None:
    """The installed vLLM's version, or None when vLLM is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        with contextlib.suppress(PackageNotFoundError):
            return version(dist)
    return None


def import_vllm() -> None:
    """Imports vLLM's engine modules (and torch's CUDA libraries): a worker's start times it apart."""
    from vllm import LLM  # noqa: F401


def create_engine(spec: EngineSpec, **engine_kwargs: Any) -> LLM:
    """A vLLM `LLM` with LoRA enabled up to `spec.max_lora_rank`.

    `engine_kwargs` go to vLLM's engine arguments unchanged; an unknown one is an error that
    names it, never silently dropped.
    """
    if spec.deterministic and is_cuda():
        # Read when vLLM is first imported: LoRA's shrink kernel then sums over K in one pass instead
        # of atomically adding split-K partial sums (whose order varies run to run), and cuBLAS
        # uses a fixed workspace. On CPU every kernel is deterministic already.
        os.environ["VLLM_BATCH_INVARIANT"] = "1"
    if is_cuda():
        # One Triton cache for every start. Unset, torch's Inductor points it at its own folder on a
        # run that compiles graphs but not on one that loads them from vLLM's cache, so the second
        # start rebuilt the LoRA kernels (ptxas for ~40 s on an H200); Triton's default, made fixed.
        os.environ.setdefault("TRITON_CACHE_DIR", triton_cache_dir())
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
    if spec.load_in_4bit and _supports_bitsandbytes():
        kwargs["quantization"] = "bitsandbytes"
    if spec.sleep_mode and is_cuda():
        kwargs["enable_sleep_mode"] = True  # vLLM-CPU has no sleep mode (it refuses the argument)
    known = set(getattr(EngineArgs, "__dataclass_fields__", {}))
    unknown = sorted(k for k in engine_kwargs if known and k not in known)
    if unknown:
        raise TypeError(
            f"from_pretrained got {unknown}, which are neither transformers' from_pretrained "
            f"arguments nor vLLM {vllm_version()} engine arguments; fix the spelling or remove them."
        )
    kwargs.update(device_defaults(spec, engine_kwargs))
    kwargs.update(engine_kwargs)
    if not is_cuda():
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu

        cpu_lora_ops.install(lora_ops, punica_cpu)
        return LLM(**kwargs)
    from vllm import SamplingParams
    from vllm.v1.worker import gpu_worker

    fields = None if spec.sampler_warmup is None else {**spec.sampler_warmup, "logprobs": 0}  # as `sample` asks
    with sampler_warmup(fields, SamplingParams, gpu_worker):
        return LLM(**kwargs)


def build_lora_kernels(work: list[tuple[int, list[int], int]], max_lora_rank: int, max_loras: int) -> None:
    """Runs vLLM's LoRA shrink and expand ops once per (input size, output slices, tokens) of `work`
    on zero tensors, as `PunicaWrapperGPU.add_lora_linear` calls them, so that Triton builds their
    kernels into its cache (`worker_env.KernelPrebuild` runs this in child processes; CUDA only)."""
    import torch
    from vllm.lora.ops.triton_ops import LoRAKernelMeta, lora_expand, lora_shrink

    cuda, bf16 = torch.device("cuda"), torch.bfloat16
    keep = []  # vLLM caches the weights' pointers by address: no address may be reused
    for size, slices, tokens in work:
        a = tuple(torch.zeros(max_loras, 1, max_lora_rank, size, dtype=bf16, device=cuda) for _ in slices)
        b = tuple(torch.zeros(max_loras, 1, out, max_lora_rank, dtype=bf16, device=cuda) for out in slices)
        meta = LoRAKernelMeta.make(max_loras, tokens, cuda)
        meta.prepare_tensors(torch.zeros(tokens, dtype=torch.int32, device=cuda))  # every token on LoRA 0
        x = torch.zeros(tokens, size, dtype=bf16, device=cuda)
        y = torch.zeros(tokens, sum(slices), dtype=bf16, device=cuda)
        buffer = torch.empty(len(slices), tokens, max_lora_rank, dtype=torch.float32, device=cuda)
        lora_shrink(x, a, buffer, *meta.meta_args(tokens, False), 1.0)
        lora_expand(buffer, b, y, *meta.meta_args(tokens, False), offset_start=0, add_inputs=True)
        keep += [a, b, meta, x, y, buffer]
    torch.cuda.synchronize()


def _supports_bitsandbytes() -> bool:
    """vLLM 0.26 loads bitsandbytes 4-bit checkpoints; later releases moved it out of tree.

    Without it the engine serves the full-precision base while the learner trains on a 4-bit
    one: only the adapter is synced, never merged weights.
    """
    try:
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    except ImportError:
        return False
    return "bitsandbytes" in QUANTIZATION_METHODS


def sampling_params(**fields: Any) -> Any:
    """vLLM `SamplingParams(**fields)`; `structured_outputs_regex` becomes vLLM's structured outputs."""
    from vllm import SamplingParams

    regex = fields.pop("structured_outputs_regex", None)
    if regex:
        from vllm.sampling_params import StructuredOutputsParams

        fields["structured_outputs"] = StructuredOutputsParams(regex=regex)
    return SamplingParams(**fields)


def memory_request(name: str, lora_id: int) -> LoRARequest:
    """A request for an adapter already installed by `load_adapter` (its path is never read)."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, lora_id, MEMORY_PATH_PREFIX + name)


def folder_request(name: str, lora_id: int, path: str) -> LoRARequest:
    """A request that makes vLLM load a PEFT adapter folder the usual way."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, lora_id, os.path.abspath(path))


def load_adapter(llm: LLM, adapter: LoRAAdapter, lora_id: int) -> LoRARequest:
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
    from rlactors.core.adapter import flatten

    device = "cuda" if is_cuda() else "cpu"
    flat = adapter.flat if adapter.flat is not None else flatten(adapter.tensors)[0]
    layout = [(name, tuple(t.shape)) for name, t in adapter.tensors.items()]
    on_device = flat.to(device)
    held = llm.collective_rpc(lora_slots.copy_into_slots, args=(on_device, layout, adapter.peft_config))
    if None in held:
        private = on_device.clone() if on_device is flat else on_device  # vLLM scales it in place
        llm.collective_rpc(_install_lora, args=(lora_id, private, layout, adapter.peft_config, device))
        held = [lora_id]
    llm.reset_prefix_cache()
    return memory_request(adapter.name, held[0])


def _install_lora(
    worker: Any, lora_id: int, private: torch.Tensor, layout: list, peft_config: dict, device: str
) -> int:
    """Runs inside the vLLM worker: builds a `LoRAModel` from views of `private` on `device`,
    activates it in place of earlier adapters, and learns its slots for the next version."""
    from vllm.lora.peft_helper import PEFTHelper

    from rlactors.core.adapter import unflatten

    try:
        from vllm.lora.lora_model import LoRAModel
    except ImportError:  # older layout
        from vllm.lora.models import LoRAModel

    worker_manager = worker.model_runner.lora_manager
    manager = lora_slots.lora_manager(worker)
    helper = PEFTHelper.from_dict(dict(peft_config))
    helper.validate_legal(worker_manager.lora_config)
    candidates = dict(
        device=device,
        dtype=worker_manager.lora_config.lora_dtype,
        model_vocab_size=worker_manager.vocab_size,
        weights_mapper=lora_slots.unstacked_mapper(manager),
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
    worker._rlactors_slots = lora_slots.learn(
        manager, lora, private, tensors, unflatten(unscaled, layout), helper.vllm_lora_scaling_factor, peft_config
    )
    return len(lora.loras)


def generate(
    llm: LLM,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    params: Any = None,
    lora_request: LoRARequest | None = None,
    use_tqdm: bool = False,
) -> list:
    """vLLM `generate` over text prompts or token-id lists; returns vLLM's `RequestOutput`s."""
    inputs = [p if isinstance(p, str) else {"prompt_token_ids": list(p)} for p in prompts]
    return llm.generate(inputs, params, lora_request=lora_request, use_tqdm=use_tqdm)


def sample(
    llm: LLM,
    prompt_token_ids: Sequence[Sequence[int]],
    *,
    n: int,
    max_tokens: int,
    temperature: float,
    top_p: float,
    lora_request: LoRARequest | None,
    **extra: Any,
) -> list[Sample]:
    """`n` completions per prompt with the log-prob of every sampled token."""
    # No per-request seed: vLLM-CPU 0.32 fails on seeded requests ("CPU Generator does not use
    # offset"); the engine's own seed (set at creation) makes runs repeatable. Log-probs come flat
    # (a few lists per request instead of one object per token), and text is decoded once at
    # the end in a batch rather than incrementally per token, unless stop strings need it.
    detokenize = bool(extra.get("stop"))
    fast = {k: v for k, v in (("flat_logprobs", True), ("detokenize", detokenize)) if _has_field(k)}
    params = sampling_params(
        n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p, logprobs=0, **fast, **extra
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
                    logprobs=token_logprobs(completion.logprobs, ids),
                    text=completion.text,
                    finish_reason=completion.finish_reason,
                )
            )
    if "detokenize" in fast and not detokenize:
        texts = llm.get_tokenizer().batch_decode([s.completion_token_ids for s in samples], skip_special_tokens=True)
        for sample_, text in zip(samples, texts):
            sample_.text = text
    return samples


class TurnStream:
    """Requests added one at a time and read back as each finishes (vLLM's own step loop, as
    `LLM.generate` runs it), so that episodes of a multi-turn rollout advance independently:
    one waiting for its tools holds back no other. Every request samples one completion.

    A prompt's `num_generations` copies are added together: vLLM caches its blocks as it schedules
    them, so copies in the same step share the prefill (on vLLM-CPU, adding one copy a step ahead of
    the rest was no faster)."""

    def __init__(self, llm: LLM, lora_request: LoRARequest | None, stop: str | None = None, **fields: Any):
        from vllm.sampling_params import RequestOutputKind

        self.llm, self.lora_request = llm, lora_request
        fast = {k: v for k, v in (("flat_logprobs", True),) if _has_field(k)}
        extra = {"stop": [stop], "include_stop_str_in_output": True} if stop else {}
        self.base = sampling_params(n=1, logprobs=0, **fast, **extra, **fields)
        self.base.output_kind = RequestOutputKind.FINAL_ONLY
        self.pending: dict[str, str] = {}  # request id -> key
        self.count = 0

    def add(self, key: str, token_ids: list[int], max_tokens: int) -> None:
        import copy

        params = copy.copy(self.base)
        params.max_tokens = max_tokens
        self.count += 1
        request_id = f"turn{self.count}"  # vLLM may add a suffix: outputs are matched on this prefix
        self.llm.llm_engine.add_request(
            request_id, {"prompt_token_ids": list(token_ids)}, params, lora_request=self.lora_request
        )
        self.pending[request_id] = key

    @property
    def busy(self) -> bool:
        return bool(self.pending)

    def step(self) -> list[Turn]:
        """One engine step; the requests that finished in it."""
        done = []
        for out in self.llm.llm_engine.step():
            if not out.finished:
                continue
            key = self.pending.pop(out.request_id.split("-", 1)[0])
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            done.append(Turn(key, ids, token_logprobs(completion.logprobs, ids), completion.finish_reason))
        return done


def sleep(llm: LLM) -> bool:
    """vLLM's sleep level 1 (weights to host memory, KV and prefix cache dropped) until `wake_up`.
    False, and nothing done, where vLLM has no sleep mode (CPU) or the engine was made without it."""
    if not is_cuda() or not getattr(llm.llm_engine.model_config, "enable_sleep_mode", False):
        return False
    llm.sleep(level=1)
    return True


def wake_up(llm: LLM) -> None:
    """Back from `sleep`: the weights (with the loaded LoRA slots) return, the KV cache is empty."""
    llm.wake_up()


def _has_field(name: str) -> bool:
    from vllm import SamplingParams as Params

    return name in (getattr(Params, "__struct_fields__", None) or getattr(Params, "__dataclass_fields__", {}))


def prompt_logprobs(
    llm: LLM, token_ids: Sequence[int], num_scored: int, lora_request: LoRARequest | None = None
) -> list[float]:
    """Log-probs vLLM gives the last `num_scored` tokens of `token_ids` (teacher-forced)."""
    params = sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    out = generate(llm, [token_ids], params, lora_request)[0]
    start = len(token_ids) - num_scored
    return [float(out.prompt_logprobs[i][token_ids[i]].logprob) for i in range(start, len(token_ids))]


def reset_prefix_cache(llm: LLM) -> None:
    llm.reset_prefix_cache()
