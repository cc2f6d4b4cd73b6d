"""Worker groups: plain worker classes made Ray actors at spawn time, with typed methods.

With `count == 0` a group holds one in-process instance instead (tests, debugging): the same
methods, no Ray. An actor's failure reaches the caller as the original exception.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from rlactors.placement import Share

if TYPE_CHECKING:
    from rlactors.adapter import LoRAAdapter
    from rlactors.config import GRPOConfig
    from rlactors.records import RolloutBatch, StepMetrics

log = logging.getLogger(__name__)


class WorkerGroup:
    """`count` actors of `cls(config, rank)`, each with its `Share` of a placement group."""

    role = "worker"

    def __init__(self, cls: type, config: "GRPOConfig", shares: list[Share], placement_group: Any,
                 max_restarts: int = 0):
        self.config = config
        self.local = None
        self.actors: list[Any] = []
        if not shares:
            self.local = cls(config, 0)
            return
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        for rank, share in enumerate(shares):
            strategy = None
            if placement_group is not None:
                strategy = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=share.bundle)
            actor_cls = ray.remote(
                num_cpus=share.num_cpus, num_gpus=share.num_gpus, max_restarts=max_restarts,
                max_task_retries=0, name=f"rlactors/{self.role}-{rank}", scheduling_strategy=strategy,
            )(cls)
            self.actors.append(actor_cls.remote(config, rank))

    @property
    def size(self) -> int:
        return len(self.actors) or 1

    def _each(self, pick: Callable[[Any], Any], *args: Any) -> list[Any]:
        """Calls the method `pick(worker)` with `args` on every worker and returns the results."""
        if self.local is not None:
            return [pick(self.local)(*args)]
        import ray

        return ray.get([pick(actor).remote(*args) for actor in self.actors])

    def build(self) -> list[int]:
        """Loads models and engines everywhere (in parallel); returns the workers' pids."""
        started = time.perf_counter()
        pids = self._each(lambda w: w.build)
        log.info("%s group built in %.1fs (pids %s)", self.role, time.perf_counter() - started, pids)
        return pids

    def pids(self) -> list[int]:
        return self._each(lambda w: w.pid)

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


class RolloutGroup(WorkerGroup):
    role = "rollout"

    def load_adapter(self, adapter: "LoRAAdapter | Any") -> list[int]:
        """Every worker loads the adapter; `adapter` may be an ObjectRef (one `ray.put` for all)."""
        return self._each(lambda w: w.load_adapter, adapter)

    def generate(self, prompt_token_ids: list[list[int]], adapter_version: int) -> "RolloutBatch":
        """Splits prompts evenly over the workers; joins their batches in prompt order."""
        from rlactors.records import concat_batches

        if self.local is not None:
            return self.local.generate(prompt_token_ids, adapter_version)
        import ray

        parts = _split(prompt_token_ids, len(self.actors))
        refs, offset = [], 0
        for actor, part in zip(self.actors, parts):
            if part:
                refs.append((offset, actor.generate.remote(part, adapter_version)))
            offset += len(part)
        batches = []
        for start, ref in refs:
            batch = ray.get(ref, timeout=self.config.rollout_timeout_s)
            batch.prompt_index += start
            batches.append(batch)
        return concat_batches(batches, pad_id=0)

    def prompt_logprobs(self, token_ids: list[int], num_scored: int) -> list[list[float]]:
        return self._each(lambda w: w.prompt_logprobs, token_ids, num_scored)


class LearnerGroup(WorkerGroup):
    role = "learner"

    def update(self, batch: "RolloutBatch", step: int) -> "StepMetrics":
        return self._each(lambda w: w.update, batch, step)[0]

    def export_adapter(self) -> Any:
        """The current adapter: an ObjectRef from an actor (stored once), or the record itself."""
        if self.local is not None:
            return self.local.export_adapter()
        return self.actors[0].export_adapter.remote()

    def save_state(self, path: str) -> None:
        self._each(lambda w: w.save_state, path)

    def load_state(self, path: str) -> int:
        return self._each(lambda w: w.load_state, path)[0]


def _split(items: list, parts: int) -> list[list]:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append(items[start:stop])
        start = stop
    return out
