"""transformers' `TrainerCallback`s in rlactors' loop, with the `TrainerState` TRL users read.

The events a GRPO run has: `on_train_begin`, `on_step_end`, `on_log` (every `logging_steps`, with
the row as `logs`), `on_save` (after each checkpoint) and `on_train_end`. Each gets
`(args, state, control, **kwargs)` as in transformers, `args` being the run's `GRPOConfig`;
`control.should_training_stop` set by any callback ends the run after the current step.
`state.log_history` holds every logged row, callbacks or not (`trainer.state.log_history`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig


class Callbacks:
    def __init__(self, callbacks: Sequence[Any] | None, config: GRPOConfig):
        from transformers import TrainerControl, TrainerState

        self.callbacks = [c() if isinstance(c, type) else c for c in callbacks or []]
        for callback in self.callbacks:
            if not hasattr(callback, "on_step_end"):
                raise TypeError(f"callbacks: {callback!r} is not a transformers TrainerCallback (subclass it)")
        self.config = config
        self.state = TrainerState(max_steps=config.max_steps or 0, save_steps=config.save_steps)
        self.state.logging_steps = config.steps_of(config.logging_steps)
        self.control = TrainerControl()
        self.extras: dict[str, Any] = {}  # model, processing_class: passed to every event, as transformers does

    def _call(self, event: str, **kwargs: Any) -> None:
        for callback in self.callbacks:
            result = getattr(callback, event)(self.config, self.state, self.control, **self.extras, **kwargs)
            if result is not None:  # transformers lets a callback return a new control
                self.control = result

    def train_begin(self, config: GRPOConfig, step: int, **extras: Any) -> None:
        """Training starts (at `step` after a resume) under `config`, its max_steps now known."""
        self.config, self.extras = config, extras
        self.state.global_step = step
        self.state.max_steps = config.max_steps or 0
        self._call("on_train_begin")

    def step_end(self, step: int, row: dict[str, Any], logged: bool) -> bool:
        """After step `step`; whether a callback asked the run to stop."""
        self.state.global_step = step
        self._call("on_step_end")
        if logged:
            self.state.log_history.append(dict(row))
            self._call("on_log", logs=dict(row))
        return bool(self.control.should_training_stop)

    def saved(self, step: int) -> None:
        self.state.global_step = step
        self._call("on_save")

    def train_end(self) -> None:
        self._call("on_train_end")
