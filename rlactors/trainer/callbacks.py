"""transformers' `TrainerCallback`s in rlactors' loop, with the `TrainerState` TRL users read.

The events a GRPO run has: `on_train_begin`, `on_step_end`, `on_log` (every `logging_steps`, with
the row as `logs`; and after each evaluation, with its row), `on_evaluate` (with the evaluation's
row as `metrics`), `on_save` (after each checkpoint) and `on_train_end`. Each gets
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
        self.callbacks: list[Any] = []
        for callback in callbacks or []:
            self.add(callback)
        self.config = config
        self.global_step, self.max_steps = 0, config.max_steps or 0
        self.log_history: list[dict[str, Any]] = []
        # transformers' TrainerState and TrainerControl are made on first use: importing them
        # imports transformers' trainer utilities and PEFT (10 s of a run's start, measured)
        self._state: Any = None
        self._control: Any = None
        self.extras: dict[str, Any] = {}  # model, processing_class: passed to every event, as transformers does

    def add(self, callback: Any) -> None:
        """A `TrainerCallback` or its class (made with no arguments), as transformers' `add_callback`."""
        callback = callback() if isinstance(callback, type) else callback
        if not hasattr(callback, "on_step_end"):
            raise TypeError(f"callbacks: {callback!r} is not a transformers TrainerCallback (subclass it)")
        self.callbacks.append(callback)

    def pop(self, callback: Any) -> Any:
        """Removes and returns the first callback that is `callback` or, for a class, one of its
        instances; None where there is none (transformers' `pop_callback`)."""
        for held in self.callbacks:
            if held is callback or (isinstance(callback, type) and isinstance(held, callback)):
                self.callbacks.remove(held)
                return held
        return None

    @property
    def state(self) -> Any:
        """transformers' `TrainerState` of the run: `global_step`, `max_steps`, `log_history`."""
        if self._state is None:
            from transformers import TrainerState

            self._state = TrainerState(save_steps=self.config.save_steps)
            self._state.logging_steps = self.config.steps_of(self.config.logging_steps)
            self._state.log_history = self.log_history
        self._state.global_step, self._state.max_steps = self.global_step, self.max_steps
        return self._state

    @property
    def control(self) -> Any:
        if self._control is None:
            from transformers import TrainerControl

            self._control = TrainerControl()
        return self._control

    def _call(self, event: str, **kwargs: Any) -> None:
        for callback in self.callbacks:
            result = getattr(callback, event)(self.config, self.state, self.control, **self.extras, **kwargs)
            if result is not None:  # transformers lets a callback return a new control
                self._control = result

    def train_begin(self, config: GRPOConfig, step: int, **extras: Any) -> None:
        """Training starts (at `step` after a resume) under `config`, its max_steps now known."""
        self.config, self.extras = config, extras
        self.global_step, self.max_steps = step, config.max_steps or 0
        self._call("on_train_begin")

    def step_end(self, step: int, row: dict[str, Any], logged: bool) -> bool:
        """After step `step`; whether a callback asked the run to stop."""
        self.global_step = step
        self._call("on_step_end")
        if logged:
            self.log_history.append(dict(row))
            self._call("on_log", logs=dict(row))
        return bool(self._control is not None and self._control.should_training_stop)

    def evaluated(self, step: int, row: dict[str, Any]) -> None:
        """After an evaluation at step `step`, its metrics in `row` (as transformers' `evaluate`)."""
        self.global_step = step
        self.log_history.append(dict(row))
        self._call("on_log", logs=dict(row))
        self._call("on_evaluate", metrics=dict(row))

    def saved(self, step: int) -> None:
        self.global_step = step
        self._call("on_save")

    def train_end(self) -> None:
        self._call("on_train_end")
