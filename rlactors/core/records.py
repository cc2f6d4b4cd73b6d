"""The typed records that cross actor boundaries (besides `LoRAAdapter` in `rlactors.core.adapter`).

`RolloutBatch`: rollout -> driver -> learner. `StepMetrics`: learner -> driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


@dataclass
class RolloutBatch:
    """B = prompts x num_generations samples, grouped: rows g*G .. g*G+G-1 share prompt g.

    P = longest prompt, C = longest completion in the batch.
    """

    prompt_ids: torch.Tensor  # [B, P] long, left-padded with pad_id
    prompt_mask: torch.Tensor  # [B, P] long, 1 on real prompt tokens
    completion_ids: torch.Tensor  # [B, C] long, right-padded with pad_id
    completion_mask: torch.Tensor  # [B, C] long, 1 on real completion tokens
    behaviour_logprobs: torch.Tensor  # [B, C] float32, vLLM's log-probs of the sampled tokens
    prompt_index: torch.Tensor  # [B] long, the prompt's position in this step's prompt list
    sample_index: torch.Tensor  # [B] long, 0 .. G-1 within the group
    truncated: torch.Tensor  # [B] bool, stopped by max_completion_length, not EOS
    completions: list[str]  # [B] decoded completion text
    adapter_version: int  # the policy version that generated every sample
    num_generations: int
    advantages: torch.Tensor | None = None  # [B] float32, set by the driver after scoring
    vllm_seconds: float = 0.0  # in the worker's `engine.sample` (vLLM + reading its outputs); slowest worker's
    # Multi-turn episodes (tools, environments, rollout_func); None for single-turn samples.
    env_mask: torch.Tensor | None = None  # [B, C] long, 1 on tokens vLLM sampled, 0 on tool results / template
    trajectories: list[list[dict[str, Any]]] | None = None  # [B] the completion as chat messages
    environments: list[Any] | None = None  # [B] each episode's environment (None where there was none)
    failures: list[str] | None = None  # [B] "" or why the episode has no reward (its environment raised)
    columns: dict[str, list[Any]] | None = None  # rollout_func's extra fields, [B] each, for the rewards
    episode_metrics: dict[str, float] = field(default_factory=dict)  # counts: episodes, turns, tool calls by outcome

    def __post_init__(self) -> None:
        self.check()

    @property
    def size(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def loss_mask(self) -> torch.Tensor:
        """[B, C] 1 where a token is the policy's own: in the loss, the KL and the token counts."""
        return self.completion_mask if self.env_mask is None else self.completion_mask * self.env_mask

    def check(self) -> None:
        """Raises ValueError when shapes disagree."""
        b = self.completion_ids.shape[0]
        pairs = {
            "prompt_ids": (self.prompt_ids.shape, self.prompt_mask.shape),
            "completion_ids": (self.completion_ids.shape, self.completion_mask.shape),
            "behaviour_logprobs": (self.completion_ids.shape, self.behaviour_logprobs.shape),
        }
        if self.env_mask is not None:
            pairs["env_mask"] = (self.completion_ids.shape, self.env_mask.shape)
        for name, (expected, got) in pairs.items():
            if tuple(expected) != tuple(got):
                raise ValueError(f"RolloutBatch.{name}: shapes {tuple(expected)} and {tuple(got)} differ")
        for name in ("prompt_ids", "prompt_index", "sample_index", "truncated"):
            if getattr(self, name).shape[0] != b:
                raise ValueError(f"RolloutBatch.{name} has {getattr(self, name).shape[0]} rows, expected {b}")
        for name in ("completions", "trajectories", "environments", "failures"):
            value = getattr(self, name)
            if value is not None and len(value) != b:
                raise ValueError(f"RolloutBatch.{name} has {len(value)} entries, expected {b}")
        if b % self.num_generations:
            raise ValueError(f"RolloutBatch of {b} samples is not whole groups of {self.num_generations}")
        if self.advantages is not None and self.advantages.shape != (b,):
            raise ValueError(f"RolloutBatch.advantages has shape {tuple(self.advantages.shape)}, expected ({b},)")

    def to(self, device: Any) -> RolloutBatch:
        """The batch with every tensor on `device` (those already there are not copied)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def with_advantages(self, advantages: torch.Tensor) -> RolloutBatch:
        return replace(self, advantages=advantages.float())

    def padded(self, multiple: int | None) -> RolloutBatch:
        """The batch with prompts left-padded and completions right-padded to a multiple of `multiple`
        tokens (TRL's `pad_to_multiple_of`; None: as it is). The new positions are masked out: the same
        log-probs and loss, in fewer shapes of input."""
        if not multiple:
            return self
        p, c = self.prompt_ids.shape[1], self.completion_ids.shape[1]
        left, right = -p % multiple, -c % multiple
        if not (left or right):
            return self

        def pad(t: torch.Tensor | None, before: int, after: int) -> torch.Tensor | None:
            return None if t is None else torch.nn.functional.pad(t, (before, after))  # zeros: masked out

        return replace(
            self,
            prompt_ids=pad(self.prompt_ids, left, 0),
            prompt_mask=pad(self.prompt_mask, left, 0),
            completion_ids=pad(self.completion_ids, 0, right),
            completion_mask=pad(self.completion_mask, 0, right),
            behaviour_logprobs=pad(self.behaviour_logprobs, 0, right),
            env_mask=pad(self.env_mask, 0, right),
        )

    def rows(self, start: int, stop: int, multiple: int | None = None) -> RolloutBatch:
        """Samples [start, stop) as a batch (whole groups only), trimmed to their own lengths, then
        `padded` to a multiple of `multiple` tokens (None: not)."""

        def cut(t: Any) -> Any:
            return None if t is None else t[start:stop]

        c_len = int(self.completion_mask[start:stop].sum(-1).max().item()) if stop > start else 0
        p_len = int(self.prompt_mask[start:stop].sum(-1).max().item()) if stop > start else 0
        return RolloutBatch(
            prompt_ids=self.prompt_ids[start:stop, self.prompt_ids.shape[1] - p_len :],
            prompt_mask=self.prompt_mask[start:stop, self.prompt_mask.shape[1] - p_len :],
            completion_ids=self.completion_ids[start:stop, : max(c_len, 1)],
            completion_mask=self.completion_mask[start:stop, : max(c_len, 1)],
            behaviour_logprobs=self.behaviour_logprobs[start:stop, : max(c_len, 1)],
            prompt_index=cut(self.prompt_index),
            sample_index=cut(self.sample_index),
            truncated=cut(self.truncated),
            completions=self.completions[start:stop],
            adapter_version=self.adapter_version,
            num_generations=1,
            advantages=cut(self.advantages),
            env_mask=None if self.env_mask is None else self.env_mask[start:stop, : max(c_len, 1)],
            trajectories=cut(self.trajectories),
            environments=cut(self.environments),
            failures=cut(self.failures),
        ).padded(multiple)


def concat_batches(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Joins batches from several rollout workers (prompt indices are kept as given)."""
    if len(batches) == 1:
        return batches[0]
    versions = {b.adapter_version for b in batches}
    if len(versions) != 1:
        raise ValueError(f"cannot join rollout batches of adapter versions {sorted(versions)}")
    p = max(b.prompt_ids.shape[1] for b in batches)
    c = max(b.completion_ids.shape[1] for b in batches)

    def pad(t: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
        extra = width - t.shape[1]
        return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value)

    return RolloutBatch(
        prompt_ids=torch.cat([pad(b.prompt_ids, p, pad_id, True) for b in batches]),
        prompt_mask=torch.cat([pad(b.prompt_mask, p, 0, True) for b in batches]),
        completion_ids=torch.cat([pad(b.completion_ids, c, pad_id, False) for b in batches]),
        completion_mask=torch.cat([pad(b.completion_mask, c, 0, False) for b in batches]),
        behaviour_logprobs=torch.cat([pad(b.behaviour_logprobs, c, 0.0, False) for b in batches]),
        prompt_index=torch.cat([b.prompt_index for b in batches]),
        sample_index=torch.cat([b.sample_index for b in batches]),
        truncated=torch.cat([b.truncated for b in batches]),
        completions=[text for b in batches for text in b.completions],
        adapter_version=versions.pop(),
        num_generations=batches[0].num_generations,
        vllm_seconds=max(b.vllm_seconds for b in batches),
        env_mask=None if batches[0].env_mask is None else torch.cat([pad(b.env_mask, c, 0, False) for b in batches]),
        trajectories=_joined(batches, "trajectories"),
        environments=_joined(batches, "environments"),
        failures=_joined(batches, "failures"),
        episode_metrics=_summed_metrics(batches),
    )


def _joined(batches: list[RolloutBatch], name: str) -> list | None:
    if getattr(batches[0], name) is None:
        return None
    return [item for b in batches for item in getattr(b, name)]


def _summed_metrics(batches: list[RolloutBatch]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in batches:
        for key, value in b.episode_metrics.items():
            out[key] = out.get(key, 0.0) + value
    return out


@dataclass(frozen=True)
class BatchTotals:
    """The whole optimizer batch that a learner's shard belongs to: the loss normalisers are global,
    so learners on shards add up to one learner on the whole batch."""

    size: int  # samples
    num_items: float  # the policy's completion tokens (tool results and padding not counted)
    num_micro: int  # micro-batches over all shards

    @classmethod
    def per_mini_batch(cls, shards: list[RolloutBatch], micro_batch_size: int, count: int) -> list[BatchTotals]:
        """The totals of each of `count` mini-batches, mini-batch j being slice j of every shard."""
        return [
            cls.of([s.rows(*mini_batch_bounds(s.size, count)[j]) for s in shards], micro_batch_size)
            for j in range(count)
        ]

    @classmethod
    def of(cls, shards: list[RolloutBatch], micro_batch_size: int) -> BatchTotals:
        return cls(
            size=sum(s.size for s in shards),
            num_items=float(sum(float(s.loss_mask.sum()) for s in shards)),
            num_micro=sum(-(-s.size // micro_batch_size) for s in shards),
        )


def mini_batch_bounds(size: int, count: int) -> list[tuple[int, int]]:
    """`count` contiguous row ranges of a batch of `size` rows, as even as can be."""
    return [(size * j // count, size * (j + 1) // count) for j in range(count)]


@dataclass
class StepMetrics:
    """What one learner update reports. Names follow TRL's logged metrics."""

    step: int
    adapter_version: int  # the version after this update
    loss: float
    grad_norm: float
    learning_rate: float
    kl: float
    clip_ratio_low: float
    clip_ratio_high: float
    logprob_mismatch: float  # mean |logp_vllm - logp_learner| over completion tokens, before the update
    skipped: bool  # the update was not applied (non-finite loss or gradient)
    optimizer_steps: int
    staleness: int = 0  # adapter versions between the batch's generator and the learner before the update
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class MemoryNeed:
    """One learner's GPU, measured after its model is resident and before vLLM starts."""

    extra_bytes: int  # what a training micro-step allocates above the resident weights, plus AdamW
    free_bytes: int  # free on the device (all processes) after that step's memory was handed back
    total_bytes: int
    kept_bytes: int = 0  # of extra_bytes, what stays allocated between updates: AdamW and the gradients
