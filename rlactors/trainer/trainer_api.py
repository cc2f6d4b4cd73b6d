"""What TRL's trainer offers beside `train()`, for `GRPOTrainer`: `args`, `model`, `state`, the
callbacks' `add_callback` / `pop_callback` / `remove_callback`, `save_model` and `push_to_hub`;
and `TrainResult`, what `train()` returns (transformers' `TrainOutput` fields first)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlactors.trainer import checkpoints

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig
    from rlactors.trainer.callbacks import Callbacks
    from rlactors.trainer.model_source import ModelSource


@dataclass
class TrainResult:
    """What `train()` returns: transformers' `TrainOutput` (`global_step`, `training_loss` and
    `metrics`: `train_runtime`, `train_samples_per_second`, ... of this call), then the run's own:
    the final adapter's PEFT folder and every step's row of metrics (a resumed run's earlier ones too)."""

    global_step: int
    training_loss: float
    metrics: dict[str, float]
    final_adapter: str
    rows: list[dict[str, Any]]


class TrainerAPI:
    """TRL's `Trainer` accessors over a trainer's `config`, `callbacks`, `source` and `processing_class`."""

    config: GRPOConfig
    callbacks: Callbacks
    source: ModelSource
    processing_class: Any

    @property
    def model(self) -> Any:
        """The model given to the trainer, which holds the trained adapter after `train()` (None when
        the config named the model: the adapter is then in output_dir/final)."""
        return self.source.model

    @property
    def args(self) -> GRPOConfig:
        """The run's config (TRL's field names), as `trainer.args` in TRL."""
        return self.config

    @property
    def state(self) -> Any:
        """transformers' `TrainerState`: `global_step`, `max_steps`, `log_history`."""
        return self.callbacks.state

    def add_callback(self, callback: Any) -> None:
        """A transformers `TrainerCallback` (or its class) for the run's events, as in TRL."""
        self.callbacks.add(callback)

    def pop_callback(self, callback: Any) -> Any:
        """Removes and returns a callback (or the first instance of a class); None if there is none."""
        return self.callbacks.pop(callback)

    def remove_callback(self, callback: Any) -> None:
        """Removes a callback (or the first instance of a class), as in TRL; a callback the trainer
        does not hold is an error, a class none of them is an instance of is not."""
        if self.callbacks.pop(callback) is None and not isinstance(callback, type):
            raise ValueError(f"remove_callback: {callback!r} is not one of the trainer's callbacks")

    def save_model(self, output_dir: str | None = None) -> str:
        """The trained adapter as a PEFT folder (with the tokenizer), as TRL's `save_model` writes it."""
        run_dir = self.config.output_dir
        return checkpoints.save_model(output_dir or run_dir, run_dir, self.model, self.processing_class)

    def push_to_hub(self, *args: Any, **kwargs: Any) -> None:
        """TRL's upload: refused with the way to do it, since rlactors writes the adapter locally."""
        raise NotImplementedError(
            "push_to_hub: rlactors writes the trained adapter to output_dir/final (a PEFT folder) and uploads "
            "nothing; upload it with huggingface_hub: HfApi().upload_folder(folder_path=..., repo_id=...)"
        )
