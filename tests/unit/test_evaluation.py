"""The evaluation schedule and its checks (`rlactors.trainer.evaluation`), as transformers' Trainer
schedules `eval_strategy`, and the best checkpoint of `load_best_model_at_end`
(`rlactors.trainer.best_model`); the evaluation itself runs in tests/ray/test_trainer.py."""

import dataclasses

import pytest

from rlactors.core.config import ConfigError, GRPOConfig
from rlactors.trainer import best_model, evaluation
from rlactors.trainer.errors import TrainingError

pytestmark = pytest.mark.unit


def config(**values):
    return GRPOConfig(model_name="m", prompts_per_step=2, num_generations=4, max_steps=10, **values)


def evaluated_steps(cfg, steps_per_epoch=4):
    return [s for s in range(1, cfg.max_steps + 1) if evaluation.due(cfg, s, steps_per_epoch)]


def test_steps_strategy_evaluates_every_eval_steps_and_at_the_last_step():
    assert evaluated_steps(config(eval_strategy="steps", eval_steps=4)) == [4, 8, 10]
    assert evaluated_steps(config(eval_strategy="steps", eval_steps=0.5)) == [5, 10]  # a fraction of max_steps
    assert evaluated_steps(config(eval_strategy="steps", logging_steps=5)) == [5, 10]  # eval_steps defaults to it
    assert evaluated_steps(config(eval_strategy="steps", eval_steps=2, eval_delay=5)) == [6, 8, 10]
    assert evaluated_steps(config()) == []  # "no", TRL's default


def test_epoch_strategy_evaluates_after_each_pass_over_the_training_prompts():
    assert evaluated_steps(config(eval_strategy="epoch"), steps_per_epoch=4) == [4, 8, 10]
    assert evaluated_steps(config(eval_strategy="epoch", eval_delay=2), steps_per_epoch=4) == [8, 10]
    assert evaluation.steps_per_epoch(num_prompts=9, prompts_per_step=2) == 5


def test_an_evaluation_without_eval_prompts_is_an_error_that_names_the_field_and_the_fix():
    with pytest.raises(ConfigError, match="eval_strategy='steps' needs prompts to evaluate on: pass eval_dataset="):
        evaluation.check_schedule(config(eval_strategy="steps"), None, custom_rollouts=False)
    with pytest.raises(ConfigError, match="eval_on_start=True needs prompts"):
        evaluation.check_schedule(config(eval_on_start=True), None, custom_rollouts=False)
    with pytest.raises(ConfigError, match="eval_dataset with rollout_func"):
        evaluation.check_schedule(config(), [{"prompt": "x"}], custom_rollouts=True)
    evaluation.check_schedule(config(), [{"prompt": "x"}], custom_rollouts=False)  # no schedule: nothing runs
    with pytest.raises(ConfigError, match="eval_strategy"):
        config(eval_strategy="always")
    # trainer.evaluate(): the same checks before any worker starts
    with pytest.raises(ConfigError, match=r"evaluate: no eval prompts; pass eval_dataset= to evaluate\(\)"):
        evaluation.check_evaluate(None, custom_rollouts=False)
    with pytest.raises(ConfigError, match="evaluate with rollout_func"):
        evaluation.check_evaluate([{"prompt": "x"}], custom_rollouts=True)


def test_eval_generations_come_in_chunks_no_larger_than_a_training_steps_batch():
    cfg = config(num_generations_eval=2)  # a step samples 2 x 4 = 8: 4 eval prompts at a time
    assert [list(c) for c in evaluation.chunks(10, cfg)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert evaluation.samples_per_prompt(config()) == 4  # num_generations_eval defaults to num_generations
    assert evaluation.chunks(3, config(num_generations_eval=16)) == [range(0, 1), range(1, 2), range(2, 3)]


def test_metrics_take_transformers_eval_prefix():
    cfg = config()
    named = evaluation.build_sets({"a": [{"prompt": "x"}]}, cfg, None, lambda row: [1, 2], prefix="test")
    assert [s.prefix for s in named] == ["test_a"]  # evaluate(metric_key_prefix="test") on a dict of datasets
    assert evaluation.prefixed("eval", {"reward": 1.0, "rewards/f/mean": 0.5}) == {
        "eval_reward": 1.0,
        "eval_rewards/f/mean": 0.5,
    }


def test_trls_eval_fields_are_rlactors_fields():
    trl = pytest.importorskip("trl")
    theirs = {f.name: f.default for f in dataclasses.fields(trl.GRPOConfig)}
    names = ("eval_strategy", "eval_steps", "eval_delay", "eval_on_start", "num_generations_eval")
    for name in (*names, "load_best_model_at_end", "metric_for_best_model", "greater_is_better"):
        assert GRPOConfig.model_fields[name].default == theirs[name], name


def _best(rows, steps, **kw):
    cfg = GRPOConfig(
        model_name="m", eval_strategy="steps", eval_steps=2, save_steps=2, load_best_model_at_end=True, **kw
    )
    return best_model.best_checkpoint(cfg, rows, [(s, f"run/checkpoint-{s}") for s in steps])


def test_the_best_checkpoint_is_the_best_evaluated_one_on_disk():
    rows = [
        {"step": 0, "eval_reward": 0.9},  # eval_on_start: no checkpoint-0
        {"step": 2, "eval_reward": 0.4, "eval_nll_loss": 3.0},
        {"step": 4, "eval_reward": float("nan")},  # every reward missing: never the best
        {"step": 6, "eval_reward": 0.7, "eval_nll_loss": 1.0},
        {"step": 8, "eval_reward": 0.7, "eval_nll_loss": 2.0},
        {"step": 10, "eval_reward": 0.95},  # its checkpoint was rotated away
    ]
    best = _best(rows, [2, 4, 6, 8])
    assert (best.step, best.path, best.metric, best.value) == (6, "run/checkpoint-6", "eval_reward", 0.7)  # tie: first
    assert _best(rows, [2, 4, 6, 8], metric_for_best_model="reward", greater_is_better=False).step == 2
    assert _best(rows, [2, 6, 8], metric_for_best_model="eval_nll_loss").step == 6  # "...loss": lower is better
    assert _best(rows, []) is None
    cfg = GRPOConfig(model_name="m")
    assert best_model.best_checkpoint(cfg, rows, [(2, "run/checkpoint-2")]) is None  # not asked for


def test_load_best_model_needs_checkpoints_on_evaluated_steps_and_an_existing_metric():
    for bad, fix in (
        (dict(eval_strategy="no", save_steps=2), "set eval_strategy: steps"),
        (dict(eval_strategy="steps", eval_steps=2, save_steps=0), "set eval_strategy: steps"),
        (dict(eval_strategy="steps", eval_steps=2, save_steps=3), "save_steps must be a multiple of it"),
    ):
        with pytest.raises(ValueError, match=f"load_best_model_at_end=true.*{fix}"):
            GRPOConfig(model_name="m", load_best_model_at_end=True, **bad)
    cfg = GRPOConfig(
        model_name="m",
        load_best_model_at_end=True,
        eval_strategy="steps",
        logging_steps=2,
        save_steps=4,
        metric_for_best_model="accuracy",
    )
    with pytest.raises(TrainingError, match=r"metric_for_best_model='accuracy': the evaluation has no 'eval_accuracy'"):
        best_model.check_metric(cfg, {"step": 4, "eval_reward": 0.5})
    best_model.check_metric(cfg.model_copy(update={"metric_for_best_model": "reward"}), {"eval_reward": 0.5})
