"""The rollouts a step trains on: generated when the step asks, or launched one step ahead
(`max_staleness: 1`) so that step n+1 generates while step n is scored and trained on."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig
    from rlactors.core.records import RolloutBatch
    from rlactors.trainer.prompts import PromptSampler

# (prompt indices, adapter version, seed) -> the samples of those prompts
Generate = Callable[[list[int], int, "int | None"], "RolloutBatch"]


@dataclass
class InFlight:
    """A generation launched ahead: the step it is for, its prompts, and the sampler position before
    they were drawn (what a checkpoint records)."""

    step: int
    indices: list[int]
    batch: Future
    sampler_state: dict[str, Any]


class Generations:
    def __init__(self, config: GRPOConfig):
        self.config = config
        self.inflight: InFlight | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlactors-rollout")

    def take(
        self, step: int, sampler: PromptSampler, generate: Generate, version: int
    ) -> tuple[list[int], RolloutBatch]:
        """This step's prompt indices and samples: the generation launched ahead, or one made now."""
        if self.inflight is not None:
            launched, self.inflight = self.inflight, None
            if launched.step != step:
                raise RuntimeError(f"generation launched for step {launched.step} taken at step {step}")
            return launched.indices, launched.batch.result()
        indices = sampler.next_batch(self.config.prompts_per_step)
        return indices, generate(indices, version, self.seed(step))

    def launch(self, step: int, sampler: PromptSampler, generate: Generate, version: int) -> None:
        """Starts generating step `step`'s samples under adapter `version`, in the background."""
        state = sampler.state()
        indices = sampler.next_batch(self.config.prompts_per_step)
        future = self.pool.submit(generate, indices, version, self.seed(step))
        self.inflight = InFlight(step, indices, future, state)

    def after_inflight(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` once the generation in flight, if any, is done (an evaluation's generations
        wait their turn: the rollout workers take one call at a time)."""
        return self.pool.submit(fn, *args).result()

    def sampler_state(self, sampler: PromptSampler) -> dict[str, Any]:
        """The position a checkpoint records: prompts drawn for a generation in flight are drawn again."""
        return self.inflight.sampler_state if self.inflight else sampler.state()

    def seed(self, step: int) -> int | None:
        if not self.config.deterministic_generation:
            return None
        return (self.config.seed * 1_000_003 + step * 10_007) % 2**62

    def close(self) -> None:
        """Ends the generation in flight (it ends with its actors); a later run starts a new pool."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.inflight = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlactors-rollout")
