"""`GRPOTrainer`'s arguments in both shapes: TRL's (`model`, `reward_funcs`, `args`, `train_dataset`,
...) and rlactors' first one (`GRPOTrainer(config, reward_funcs=..., train_dataset=...)`, the
config a `GRPOConfig`, a dict or a YAML path)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NoReturn

from rlactors.core.config import ConfigError, GRPOConfig
from rlactors.core.config_file import load_config
from rlactors.distributed import scoring
from rlactors.distributed.reward_models import RewardModel, looks_like_model
from rlactors.trainer.checkpoints import resume_target


def config_and_model(first: Any, args: Any, config: Any) -> tuple[GRPOConfig, Any]:
    """(the run's config, the model argument) from TRL's first positional argument, `args` and `config`.

    The first argument is the config when it is a `GRPOConfig`, a dict or a YAML file, else the model."""
    if _is_config(first):
        first, config = None, first if config is None else _both("the first argument", config)
    if args is not None:
        config = args if config is None else _both("args", config)
    if config is None:
        config = GRPOConfig()
    if isinstance(config, str):
        config = load_config(config)
    elif isinstance(config, dict):
        config = GRPOConfig.from_dict(config)
    elif not isinstance(config, GRPOConfig):
        raise ConfigError(
            f"args={type(config).__module__}.{type(config).__name__}: pass rlactors.GRPOConfig (it takes TRL's "
            "GRPOConfig field names: `from rlactors import GRPOConfig`)"
        )
    return config, first


def _is_config(value: Any) -> bool:
    if isinstance(value, (GRPOConfig, dict)):
        return True
    return isinstance(value, str) and value.endswith((".yaml", ".yml")) and os.path.isfile(value)


def _both(name: str, config: Any) -> NoReturn:
    raise ConfigError(f"GRPOTrainer got the config twice ({name} and config=): pass it once, as args=")


def rewards(
    reward_funcs: Any,
    config: GRPOConfig,
    environment_rewards: Sequence[scoring.RewardFunction] = (),
    processing_classes: Any = None,
) -> tuple[list[scoring.RewardFunction], list[float]]:
    """The reward functions (a callable, a reward model, a list, or the config's "module:function"
    strings and model folders) and their weights; environments' `get_reward`s follow them with
    weight 1 (as TRL). `processing_classes`: TRL's `reward_processing_classes`, the reward models'
    tokenizers (entries for reward functions are ignored, as in TRL)."""
    if reward_funcs is None:
        specs: list[Any] = list(config.reward_funcs)
    elif callable(reward_funcs) or isinstance(reward_funcs, str):
        specs = [reward_funcs]
    else:
        specs = list(reward_funcs)
    specs = reward_models(specs, processing_classes)
    if not specs and not environment_rewards:
        raise ConfigError(
            'reward_funcs is empty: give at least one ("module:function" in YAML, a callable in Python), '
            "or an environment_factory whose environment has get_reward()"
        )
    functions = [scoring.resolve(spec) for spec in specs]
    weights = list(config.reward_weights or [1.0] * len(specs))
    if len(weights) != len(specs):
        raise ConfigError(
            f"reward_weights has {len(weights)} entries for {len(specs)} reward functions: give one weight per function"
        )
    scoring.check_picklable(functions)
    return functions + list(environment_rewards), weights + [1.0] * len(environment_rewards)


def reward_models(specs: list[Any], processing_classes: Any) -> list[Any]:
    """`specs` with each reward model (a model folder, hub id or loaded model) made a `RewardModel`."""
    if processing_classes is None or not isinstance(processing_classes, (list, tuple)):
        processing_classes = [processing_classes] * len(specs)
    if len(processing_classes) != len(specs):
        raise ConfigError(
            f"reward_processing_classes has {len(processing_classes)} entries for {len(specs)} reward functions: "
            "give one per entry of reward_funcs (None for functions), as TRL"
        )
    out, models = [], 0
    for spec, tokenizer in zip(specs, processing_classes):
        if looks_like_model(spec):
            spec, models = RewardModel(spec, tokenizer, models), models + 1
        out.append(spec)
    return out


def refuse_unsupported(optimizers: Any) -> None:
    """TRL arguments rlactors has no use for are errors that say so, never dropped silently."""
    if optimizers not in (None, (None, None)):
        raise ConfigError(
            "optimizers: the learner builds its optimizer in its own process from optim, learning_rate, "
            "adam_beta1, adam_beta2, adam_epsilon and weight_decay; set those instead"
        )


def train_config(config: GRPOConfig, resume_from_checkpoint: Any, trial: Any, ignore_keys_for_eval: Any) -> GRPOConfig:
    """The run's config under transformers' `train()` arguments: `resume_from_checkpoint` True (the
    newest checkpoint in output_dir) or a folder; None or False leave the config's own."""
    refuse_unsupported_train(trial, ignore_keys_for_eval)
    if resume_from_checkpoint in (None, False):
        return config
    return config.model_copy(update={"resume_from_checkpoint": resume_target(config, resume_from_checkpoint)})


def refuse_unsupported_train(trial: Any, ignore_keys_for_eval: Any) -> None:
    """transformers' `train()` arguments for hyperparameter search and model outputs: errors that say so."""
    if trial is not None:
        raise ConfigError("train(trial=...): rlactors has no hyperparameter search; leave trial out")
    if ignore_keys_for_eval is not None:
        raise ConfigError(
            "train(ignore_keys_for_eval=...): evaluation here scores generations with the reward functions, "
            "not model outputs; leave it out"
        )
