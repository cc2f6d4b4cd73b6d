"""The trainer's own error, and the checks after each step that stop a run going wrong."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class TrainingError(RuntimeError):
    """The run stopped on purpose: the message says why and what to change."""


class StepChecks:
    """Stops the run when too many samples lack a reward, or too many steps in a row were skipped."""

    def __init__(self, max_reward_error_rate: float, max_skipped_steps: int):
        self.max_reward_error_rate, self.max_skipped_steps = max_reward_error_rate, max_skipped_steps
        self.skipped_in_row = 0

    def rewards(
        self, names: Sequence[str], combined: Any, scores: Any, step: int, write: Callable[[str], None]
    ) -> None:
        """Writes each reward function's errors; raises past `max_reward_error_rate` missing samples."""
        import torch

        missing = float(torch.isnan(combined).float().mean())
        for name, result in zip(names, scores.results):
            if result.errors:
                first = "first: " + (result.first_error.strip().splitlines()[-1] if result.first_error else "?")
                write(f"rlactors: step {step}: reward {name!r}: {result.errors} sample(s) without a reward; " + first)
        if missing > self.max_reward_error_rate:
            raise TrainingError(
                f"step {step}: {missing:.0%} of samples have no reward (max_reward_error_rate="
                f"{self.max_reward_error_rate}); first error: {scores.first_error()}. Fix the reward "
                "function(s) or raise max_reward_error_rate"
            )

    def skipped(self, skipped: bool) -> None:
        self.skipped_in_row = self.skipped_in_row + 1 if skipped else 0
        if self.skipped_in_row >= self.max_skipped_steps:
            raise TrainingError(
                f"{self.skipped_in_row} steps in a row had a non-finite loss or gradient and were skipped "
                f"(max_skipped_steps={self.max_skipped_steps}): lower learning_rate or check the rewards"
            )
