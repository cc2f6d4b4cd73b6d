"""vLLM's sampler warm-up narrowed to what a run samples with. Plain Python: `vllm_engine` (the one
module that imports vLLM) hands it vLLM's `SamplingParams` class and CUDA worker module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

# The fields of a request that decide which of vLLM's sampler kernels run for it.
SAMPLER_FIELDS = frozenset(
    {"temperature", "top_p", "top_k", "min_p", "min_tokens", "logprobs", "logit_bias", "allowed_token_ids"}
    | {"presence_penalty", "frequency_penalty", "repetition_penalty"}
)


@contextlib.contextmanager
def sampler_warmup(fields: Mapping[str, Any] | None, params_cls: Any, worker_module: Any) -> Iterator[None]:
    """While an engine starts: vLLM's model runner V2 (vLLM 0.26 on CUDA) warms its sampler up with
    the run's sampling `fields` (those in SAMPLER_FIELDS) instead of every feature at once (penalties,
    min-p, top-k/top-p, logit bias, bad words, 5 log-probs, prompt log-probs), and without a grammar
    bitmask unless `fields` ask for structured outputs (`structured_outputs_regex`). Triton then builds
    only the kernels the run launches: on a machine's first start the main example's engine built 25
    of the runner's kernels (one H100, vLLM 0.26), and by vLLM's sampler code 11 of those serve
    features the example never uses. A request with other settings builds what it needs on first
    use. `fields` None, or a vLLM without this warm-up (vLLM-CPU's V1 runner): nothing changes.

    `params_cls`: vLLM's `SamplingParams` (its `for_sampler_warmup` is replaced while the engine
    starts); `worker_module`: `vllm.v1.worker.gpu_worker` (its `warmup_kernels`, likewise)."""
    every_feature = params_cls.__dict__.get("for_sampler_warmup")
    warmup_kernels = getattr(worker_module, "warmup_kernels", None)
    own = None
    if fields is not None and every_feature is not None and warmup_kernels is not None:
        with contextlib.suppress(Exception):  # settings vLLM refuses: the run's first request says why
            own = params_cls(**{k: v for k, v in fields.items() if k in SAMPLER_FIELDS})
    if own is None:
        yield
        return
    bitmask = bool(fields.get("structured_outputs_regex"))

    def warm_up(model_runner: Any, execute_model: Any, sample_tokens: Any) -> Any:
        sample = sample_tokens if bitmask else lambda _grammar: sample_tokens(None)
        return warmup_kernels(model_runner, execute_model, sample)

    params_cls.for_sampler_warmup, worker_module.warmup_kernels = staticmethod(own.clone), warm_up
    try:
        yield
    finally:
        params_cls.for_sampler_warmup, worker_module.warmup_kernels = every_feature, warmup_kernels
