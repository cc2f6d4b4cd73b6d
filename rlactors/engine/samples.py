"""What the engine hands back: plain records, free of vLLM's types (`rlactors.engine.vllm_engine`
fills them)."""

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
