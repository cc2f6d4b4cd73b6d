"""Evaluation while training: scheduled as transformers' Trainer schedules it, measured as TRL's GRPO
measures its steps.

The eval prompts are sampled `num_generations_eval` times each (default `num_generations`) under the
rollout workers' current adapter and scored by the run's reward functions; nothing is trained on
them. Every evaluation samples from the same seed (`seed`): two evaluations differ by the adapter
alone, so their difference is the training's, not the dice's.

When: `eval_strategy` "steps" every `eval_steps` steps (default `logging_steps`), "epoch" after each
pass over the training prompts, neither before `eval_delay`; `eval_on_start` adds one before the
first step. The metrics are a step's sample metrics under transformers' prefix (`eval_reward`,
`eval_reward_std`, `eval_rewards/<function>/mean`, `eval_completions/mean_length`, ...) with
`eval_runtime` and `eval_samples`; a dict of eval datasets gives `eval_<name>_...` for each.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlactors.core.config_rules import ConfigError
from rlactors.trainer.prompts import PromptTable, prompt_table

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig
    from rlactors.core.records import RolloutBatch


@dataclass
class EvalSet:
    """One eval dataset's prompts, and the prefix of its metrics."""

    prefix: str  # "eval", or "eval_<name>" for the entry <name> of a dict of datasets
    prompts: PromptTable


def run(
    eval_set: EvalSet,
    config: GRPOConfig,
    generate: Callable[[list[Any], int, int], RolloutBatch],
    measure: Callable[[list[dict[str, Any]], RolloutBatch, int], dict[str, Any]],
    with_rows: bool,
) -> dict[str, Any]:
    """One evaluation of `eval_set`, its metrics prefixed: `generate(prompts, seed, n)` samples prompts
    (rows `with_rows`, else token ids) under the newest adapter, `measure(rows, batch, n)` scores them."""
    from rlactors.core.records import concat_batches  # torch: not imported before Ray's start

    started = time.perf_counter()
    table, n = eval_set.prompts, samples_per_prompt(config)
    parts = []
    for span in chunks(len(table), config):
        part = generate([table.rows[i] if with_rows else table.token_ids[i] for i in span], config.seed + span.start, n)
        part.prompt_index += span.start
        parts.append(part)
    batch = concat_batches(parts, pad_id=0)
    metrics = measure([table.rows[int(p)] for p in batch.prompt_index], batch, n)
    metrics |= {"adapter_version": batch.adapter_version, "samples": batch.size}
    metrics["runtime"] = time.perf_counter() - started
    return prefixed(eval_set.prefix, metrics)


def check_schedule(config: GRPOConfig, eval_dataset: Any, custom_rollouts: bool) -> None:
    """An evaluation asked for without prompts to evaluate on, or where it cannot run: a `ConfigError`."""
    asked = config.eval_strategy != "no" or config.eval_on_start
    if asked and eval_dataset is None:
        field = f"eval_strategy={config.eval_strategy!r}" if config.eval_strategy != "no" else "eval_on_start=True"
        raise ConfigError(
            f"{field} needs prompts to evaluate on: pass eval_dataset= to GRPOTrainer, or set eval_strategy "
            '"no" and eval_on_start False'
        )
    if eval_dataset is not None and custom_rollouts:
        raise ConfigError(
            "eval_dataset with rollout_func: rlactors evaluates with its own rollouts only; leave eval_dataset out "
            "(or score your rollout_func's samples yourself)"
        )


def check_evaluate(eval_dataset: Any, custom_rollouts: bool) -> None:
    """`trainer.evaluate()` without prompts, or with a `rollout_func`: a `ConfigError` with the fix."""
    if eval_dataset is None:
        raise ConfigError(
            "evaluate: no eval prompts; pass eval_dataset= to evaluate() or to GRPOTrainer (a dataset or "
            "a dict of them)"
        )
    if custom_rollouts:
        raise ConfigError(
            "evaluate with rollout_func: rlactors evaluates with its own rollouts only; score your "
            "rollout_func's samples yourself"
        )


def build_sets(
    eval_dataset: Any,
    config: GRPOConfig,
    tokenizer: Any,
    render: Callable[[dict], list[int]] | None,
    prefix: str = "eval",
) -> list[EvalSet]:
    """The eval prompts, rendered and length-filtered as the training prompts are; the metrics of
    an entry <name> of a dict of datasets go under `<prefix>_<name>`."""
    if eval_dataset is None:
        return []
    named = eval_dataset.items() if isinstance(eval_dataset, dict) else [("", eval_dataset)]
    prefixes = [f"{prefix}_{name}" if name else prefix for name, _ in named]
    return [
        EvalSet(prefix, prompt_table(data, config, tokenizer, render, what=f"{prefix} prompts"))
        for prefix, (_, data) in zip(prefixes, named)
    ]


def due(config: GRPOConfig, step: int, steps_per_epoch: int) -> bool:
    """Whether the evaluation schedule evaluates after step `step` (the last step too, as transformers'
    `DefaultFlowCallback` ends a run)."""
    last = step == config.max_steps
    if config.eval_strategy == "steps":
        every = config.steps_of(config.eval_steps if config.eval_steps is not None else config.logging_steps)
        return (step % max(every, 1) == 0 or last) and step >= config.eval_delay
    if config.eval_strategy == "epoch":
        return (step % steps_per_epoch == 0 or last) and step / steps_per_epoch >= config.eval_delay
    return False


def steps_per_epoch(num_prompts: int, prompts_per_step: int) -> int:
    return max(1, math.ceil(num_prompts / prompts_per_step))


def chunks(count: int, config: GRPOConfig) -> list[range]:
    """Prompt ranges sampled together: as many samples as a training step's, at most (the batch the
    rollout workers were sized for)."""
    size = max(1, config.samples_per_step // samples_per_prompt(config))
    return [range(i, min(i + size, count)) for i in range(0, count, size)]


def samples_per_prompt(config: GRPOConfig) -> int:
    return config.num_generations_eval or config.num_generations


def prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` under transformers' eval prefix (`reward` -> `eval_reward`)."""
    return {f"{prefix}_{key}": value for key, value in metrics.items()}
