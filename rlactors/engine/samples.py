"""What the engine hands back: plain records, free of vLLM's types (`rlactors.engine.vllm_engine`
fills them); and the seeding that makes its draws repeatable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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


def token_logprobs(entries: Any, token_ids: Sequence[int]) -> list[float]:
    """The log-prob of each chosen token, from vLLM's flat lists (`FlatLogprobs`) or per-position dicts."""
    if entries is None:
        return [0.0] * len(token_ids)
    if hasattr(entries, "start_indices"):  # FlatLogprobs: with logprobs=0, one entry per position
        starts, values, ids = entries.start_indices, entries.logprobs, entries.token_ids
        if any(ids[s] != tok for s, tok in zip(starts, token_ids)):
            raise RuntimeError("vLLM's flat log-probs do not line up with the sampled tokens")
        return [float(values[s]) for s in starts]
    return [float(entries[i][tok].logprob) for i, tok in enumerate(token_ids)]
