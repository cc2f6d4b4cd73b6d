"""The evaluation schedule and its checks (`rlactors.trainer.evaluation`), as transformers' Trainer
schedules `eval_strategy`; the evaluation itself runs in tests/ray/test_trainer.py."""

import dataclasses

import pytest

from rlactors.core.config import ConfigError, GRPOConfig
from rlactors.trainer import evaluation

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


def test_trls_eval_fields_are_rlactors_fields_and_load_best_model_is_refused():
    trl = pytest.importorskip("trl")
    theirs = {f.name: f.default for f in dataclasses.fields(trl.GRPOConfig)}
    for name in ("eval_strategy", "eval_steps", "eval_delay", "eval_on_start", "num_generations_eval"):
        assert GRPOConfig.model_fields[name].default == theirs[name], name
    with pytest.raises(ValueError, match="load_best_model_at_end=True: rlactors does not implement"):
        GRPOConfig(model_name="m", load_best_model_at_end=True)
