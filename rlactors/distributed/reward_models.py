"""TRL's reward models: a `reward_funcs` entry that is a sequence classifier (a model folder or hub
id, or a loaded `PreTrainedModel`) scores each sample with its first logit (`rlactors.workers.reward_model`).

Each reward model lives in its own Ray actor, `rlactors/reward-model-<i>`, started with the other
workers and stopped with them; on a GPU it sits beside the first learner (a small logical share of
that GPU, its memory out of the learner's part, as TRL keeps reward models beside its policy). The
`reward_funcs` entry becomes a `RewardModel`: a reward function like any other (a Ray task per
step, with its timeout and its per-sample retry), which asks its actor for the scores. A loaded
model is saved once into the run folder (`reward_models/<name>`) for the actor to load.
"""

from __future__ import annotations

import os
from typing import Any

ROLE = "reward-model"  # the actors' names: rlactors/reward-model-<i> (`groups.RewardModelGroup`)


class RewardModel:
    """A reward model as a reward function; sent to reward tasks as its name and its actor's only."""

    def __init__(self, source: Any, tokenizer: Any = None, index: int = 0):
        """`source`: a model folder or hub id, or a loaded `PreTrainedModel`; `tokenizer`: TRL's
        `reward_processing_classes` entry (None: the model's own)."""
        self.source, self.tokenizer = source, tokenizer
        name = source if isinstance(source, str) else source.config.name_or_path
        self.__name__ = str(name).rstrip("/").split("/")[-1] or f"reward_model_{index}"  # TRL's metric name
        self.actor = f"rlactors/{ROLE}-{index}"

    def __getstate__(self) -> dict[str, Any]:
        return {"__name__": self.__name__, "actor": self.actor, "source": None, "tokenizer": None}

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        import ray

        return ray.get(ray.get_actor(self.actor).score.remote(prompts, completions))

    def folder(self, output_dir: str) -> str:
        """Where the actor loads the model from: `source`, or a loaded model saved into the run folder."""
        if isinstance(self.source, str):
            return self.source
        path = os.path.join(output_dir, "reward_models", self.__name__)
        self.source.save_pretrained(path)
        return path


def looks_like_model(spec: Any) -> bool:
    """Whether a `reward_funcs` entry names a model: a folder with a config.json, or a hub id
    ("org/name", no "module:function" colon), or is a loaded one."""
    if not isinstance(spec, str):
        return hasattr(spec, "config") and hasattr(spec, "forward")
    return os.path.isfile(os.path.join(spec, "config.json")) or (":" not in spec and spec.count("/") == 1)
