"""transformers' `load_best_model_at_end`: of the checkpoints with an evaluation at their step, the
one with the best `metric_for_best_model` (`eval_reward` by default: rlactors' evaluations sample
and score, they have no loss). The checkpoint rotation keeps it, and when training ends the learners
load it, so `final/` and the caller's model hold it, as transformers loads it into the model.

It is found from the evaluations' rows (eval_metrics.jsonl) and the checkpoint folders on disk, so a
resumed run finds the one a straight run would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlactors.trainer.errors import TrainingError

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig


@dataclass(frozen=True)
class BestCheckpoint:
    step: int
    path: str
    metric: str
    value: float


def metric_name(config: GRPOConfig) -> str:
    """`metric_for_best_model` as transformers reads it: "eval_" added where missing."""
    name = config.metric_for_best_model or "reward"
    return name if name.startswith("eval_") else f"eval_{name}"


def greater_is_better(config: GRPOConfig) -> bool:
    if config.greater_is_better is not None:
        return config.greater_is_better
    return not metric_name(config).endswith("loss")


def check_metric(config: GRPOConfig, row: dict[str, Any]) -> None:
    """An evaluation's row has the metric the best model is chosen by (or an error naming those it has)."""
    name = metric_name(config)
    if config.load_best_model_at_end and name not in row:
        metrics = sorted(k for k in row if k != "step")
        raise TrainingError(
            f"metric_for_best_model={config.metric_for_best_model!r}: the evaluation has no {name!r}; its metrics "
            f"are {metrics}. Set metric_for_best_model to one of them (without or with the eval_ prefix); the "
            "checkpoints so far are kept, resume with resume_from_checkpoint: auto"
        )


def best_checkpoint(
    config: GRPOConfig, eval_rows: list[dict[str, Any]], checkpoints: list[tuple[int, str]]
) -> BestCheckpoint | None:
    """The checkpoint (of `checkpoints`, (step, path)) whose step's evaluation scored best; the
    earliest on a tie, as transformers keeps the first; None without `load_best_model_at_end` or
    before any evaluated checkpoint."""
    if not config.load_best_model_at_end:
        return None
    name, sign, paths = metric_name(config), 1.0 if greater_is_better(config) else -1.0, dict(checkpoints)
    best: BestCheckpoint | None = None
    for row in eval_rows:
        value = row.get(name)
        if row["step"] not in paths or value is None or math.isnan(value):
            continue
        if best is None or sign * value > sign * best.value:
            best = BestCheckpoint(int(row["step"]), paths[row["step"]], name, float(value))
    return best
