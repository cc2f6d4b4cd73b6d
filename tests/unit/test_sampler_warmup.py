"""vLLM's sampler warm-up narrowed to the run's sampling settings (`rlactors.engine.warmup`), with
vLLM's own `SamplingParams`; the warm-up itself runs only in CUDA's model runner V2 (tests/gpu)."""

from types import SimpleNamespace

import pytest

from rlactors.core.config import GRPOConfig
from rlactors.engine.warmup import sampler_warmup
from rlactors.workers.rollout import RolloutWorker


class Worker:
    """Stands in for `vllm.v1.worker.gpu_worker`: its `warmup_kernels` records what vLLM's would get."""

    def __init__(self):
        self.calls = []
        self.warmup_kernels = self.original = self.record

    def record(self, model_runner, execute_model, sample_tokens):
        self.calls.append(sample_tokens("a grammar bitmask"))


def run_fields(**config):
    """What a rollout worker's engine warms up with, for a run of `config`."""
    worker = RolloutWorker(GRPOConfig(**config))  # in this process: starts nothing until `build`
    return {**worker._sampling, "logprobs": 0}  # as `vllm_engine.create_engine` adds


def test_the_warmup_samples_with_the_runs_settings_only_while_the_engine_starts():
    from vllm import SamplingParams
    from vllm.v1.worker import gpu_worker

    assert callable(gpu_worker.warmup_kernels)  # what `create_engine` hands over, in the installed vLLM
    every_feature = SamplingParams.for_sampler_warmup()
    assert every_feature.repetition_penalty != 1.0 and every_feature.prompt_logprobs  # vLLM's: every feature

    fields = run_fields(temperature=0.7, top_p=0.9, min_p=0.05, generation_kwargs={"min_tokens": 4, "stop": ["\n"]})
    worker = Worker()
    with sampler_warmup(fields, SamplingParams, worker):
        own = SamplingParams.for_sampler_warmup()
        assert (own.temperature, own.top_p, own.min_p, own.min_tokens, own.logprobs) == (0.7, 0.9, 0.05, 4, 0)
        assert own.repetition_penalty == 1.0 and own.presence_penalty == 0.0 and own.top_k in (0, -1)
        assert own.prompt_logprobs is None and not own.logit_bias and not own.stop  # stop strings: not the sampler's
        assert SamplingParams.for_sampler_warmup() is not own  # a fresh copy per call, as vLLM's
        worker.warmup_kernels("runner", "execute", lambda grammar: grammar)
    assert worker.calls == [None]  # no structured outputs: no grammar bitmask to build a kernel for
    assert worker.warmup_kernels == worker.original
    assert SamplingParams.for_sampler_warmup().prompt_logprobs == every_feature.prompt_logprobs


def test_structured_outputs_keep_the_bitmask_and_everything_is_restored_after_an_error():
    from vllm import SamplingParams

    worker = Worker()
    with pytest.raises(RuntimeError, match="engine failed"):
        with sampler_warmup(run_fields(vllm_structured_outputs_regex="[0-9]+"), SamplingParams, worker):
            worker.warmup_kernels("runner", "execute", lambda grammar: grammar)
            raise RuntimeError("engine failed")
    assert worker.calls == ["a grammar bitmask"]
    assert worker.warmup_kernels == worker.original
    assert SamplingParams.for_sampler_warmup().repetition_penalty != 1.0


@pytest.mark.parametrize(
    "fields, worker",
    [
        (None, Worker()),  # vllm_sampler_warmup: all, or the loader's engine (any request may come)
        ({"temperature": -1.0}, Worker()),  # refused by vLLM: the run's first request says why, not the start
        ({"temperature": 0.5}, SimpleNamespace()),  # a vLLM whose worker has no such warm-up
    ],
)
def test_nothing_changes_without_settings_vllm_takes_or_without_the_warmup(fields, worker):
    from vllm import SamplingParams

    before = getattr(worker, "warmup_kernels", None)
    with sampler_warmup(fields, SamplingParams, worker):
        assert SamplingParams.for_sampler_warmup().repetition_penalty != 1.0
        assert getattr(worker, "warmup_kernels", None) == before
