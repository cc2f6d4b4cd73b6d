"""Worker groups: plain worker classes made Ray actors at spawn time, with typed methods.

With `count == 0` a group holds one in-process instance instead (tests, debugging): the same
methods, no Ray. An actor's failure reaches the caller as the original exception.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rlactors.distributed.placement import Share
from rlactors.distributed.reward_models import ROLE
from rlactors.workers.reward_model import RewardModelWorker
from rlactors.workers.rollout import StaleAdapterError

if TYPE_CHECKING:
    from rlactors.core.adapter import LoRAAdapter
    from rlactors.core.config import GRPOConfig
    from rlactors.core.records import RolloutBatch, StepMetrics
    from rlactors.distributed.memory import MemoryNeed

log = logging.getLogger(__name__)


class WorkerGroup:
    """`count` actors of `cls(config, rank)`, each with its `Share` of a placement group."""

    role = "worker"

    def __init__(
        self,
        cls: type,
        config: GRPOConfig,
        shares: list[Share],
        placement_group: Any,
        max_restarts: int = 0,
        **init_kwargs: Any,
    ):
        """`init_kwargs` go to every worker's constructor after (config, rank); Ray keeps them for restarts."""
        self.config = config
        self.local = None
        self.actors: list[Any] = []
        self.created = time.perf_counter()  # the actors' processes start now; `build` waits for them
        self.built_s: float | None = None  # seconds from here until `build` returned
        if not shares:
            self.local = cls(config, 0, **init_kwargs)
            return
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        for rank, share in enumerate(shares):
            strategy = None
            if placement_group is not None:
                strategy = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=share.bundle
                )
            actor_cls = ray.remote(
                num_cpus=share.num_cpus,
                num_gpus=share.num_gpus,
                max_restarts=max_restarts,
                max_task_retries=0,
                name=f"rlactors/{self.role}-{rank}",
                scheduling_strategy=strategy,
            )(cls)
            self.actors.append(actor_cls.remote(config, rank, **init_kwargs))

    def _each(self, pick: Callable[[Any], Any], *args: Any) -> list[Any]:
        """Calls the method `pick(worker)` with `args` on every worker and returns the results."""
        if self.local is not None:
            return [pick(self.local)(*_resolved(args))]
        import ray

        return ray.get([pick(actor).remote(*args) for actor in self.actors])

    def _first(self, pick: Callable[[Any], Any], *args: Any) -> Any:
        """Calls the method `pick(worker)` on the first worker only."""
        if self.local is not None:
            return pick(self.local)(*_resolved(args))
        import ray

        return ray.get(pick(self.actors[0]).remote(*args))

    def build(self) -> list[int]:
        """Loads models and engines everywhere (in parallel); returns the workers' pids."""
        started = time.perf_counter()
        pids = self._each(lambda w: w.build)
        log.info("%s group built in %.1fs (pids %s)", self.role, time.perf_counter() - started, pids)
        self.built_s = self.built_s or time.perf_counter() - self.created
        return pids

    def startup_phases(self) -> dict[str, float]:
        """Where the first worker's start went: its process until `build` ran (Ray's scheduling,
        the process, imports), then `build`'s own phases (`engine`; `model`, `warm-up`)."""
        phases = self._first(lambda w: w.startup_phases)
        if self.built_s is None or self.local is not None:
            return phases
        return {"process and imports": max(0.0, self.built_s - sum(phases.values())), **phases}

    def pids(self) -> list[int]:
        return self._each(lambda w: w.pid)

    def node_ids(self) -> list[str]:
        """The Ray node each worker runs on, by rank."""
        return self._each(lambda w: w.node_id)

    def gpus(self) -> list[str | None]:
        """The GPU UUID each worker computes on, by rank (None on CPU)."""
        return self._each(lambda w: w.gpu)

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


class RewardModelGroup(WorkerGroup):
    """One actor per reward model (`rlactors.distributed.reward_models`): worker i loads `sources[i]`,
    (a model folder or hub id, its tokenizer or None)."""

    role = ROLE

    def __init__(self, config: GRPOConfig, sources: list[tuple[str, Any]], shares: list[Share], placement_group: Any):
        super().__init__(RewardModelWorker, config, shares, placement_group, sources=sources)


class RolloutFailedError(RuntimeError):
    """Generation could not finish within the restart and redispatch budgets."""


class RolloutGroup(WorkerGroup):
    """Rollout actors that survive faults: a dead, restarted or hung worker's share of the prompts is
    generated again (whole: partial output of a dead attempt is never used), after the worker has
    loaded the current adapter; within `max_redispatches` per step and `max_restarts` per actor."""

    role = "rollout"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.adapter: Any = None  # the current adapter (an ObjectRef from the learner), for restarts
        self.republish: Callable[[], Any] | None = None  # exports the current adapter again
        self.redispatches = 0
        self.restarts = 0
        self.republished = 0

    def lora_kernel_builds(self) -> int | None:
        """The first worker's `lora_kernel_builds` (once its process is up)."""
        return self._first(lambda w: w.lora_kernel_builds)

    def load_adapter(self, adapter: LoRAAdapter | Any) -> list[int]:
        """Every worker loads the adapter; `adapter` may be an ObjectRef (one `ray.put` for all) or
        the learners' `DeviceAdapter`s (each worker opens the one on its GPU)."""
        self.adapter = adapter
        return self._reload_if_lost(lambda: self._each(lambda w: w.load_adapter, self.adapter))

    def _reload_if_lost(self, load: Callable[[], Any]) -> Any:
        """Runs `load`; if the adapter object was lost from the store, has the learner export it again
        (objects made by `ray.put` or returned by a task are not rebuilt by Ray) and loads that."""
        import ray

        try:
            return load()
        except (ray.exceptions.ObjectLostError, ray.exceptions.RayTaskError) as err:
            cause = err if isinstance(err, ray.exceptions.ObjectLostError) else getattr(err, "cause", None)
            if not isinstance(cause, ray.exceptions.ObjectLostError):
                raise
            if self.republish is None:
                raise RolloutFailedError(f"the adapter object was lost and nobody can export it again: {err}") from err
            log.warning("adapter object lost (%s); the learner exports it again", type(cause).__name__)
            self.adapter = self.republish()
            self.republished += 1
            return load()

    def sleep(self) -> list[bool]:
        """Every worker frees its GPU memory until its next use (see `RolloutWorker.sleep`). A worker
        that died since the last call holds none, and comes back awake: False for it."""
        if self.local is not None:
            return [self.local.sleep()]
        import ray

        asleep = []
        for ref in [actor.sleep.remote() for actor in self.actors]:
            try:
                asleep.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                asleep.append(False)
        return asleep

    def load_adapter_folder(self, path: str, version: int) -> list[int]:
        """Every worker loads a PEFT folder from disk (shared storage) as `version`."""
        return self._each(lambda w: w.load_adapter_folder, path, version)

    def generate(
        self, prompts: list[Any], adapter_version: int, seed: int | None = None, n: int | None = None
    ) -> RolloutBatch:
        """Splits prompts (token ids, or rows for episodes) evenly over the workers; joins their
        batches in prompt order. With a `seed`, worker i samples from `seed + i` (a redone share
        draws the same samples)."""
        from rlactors.core.records import concat_batches

        more = () if n is None else (n,)  # workers that override generate(prompts, version, seed) keep working
        if self.local is not None:
            return self.local.generate(prompts, adapter_version, seed, *more)
        parts = _split(prompts, len(self.actors))
        offsets = [sum(len(p) for p in parts[:i]) for i in range(len(parts))]
        pending = {i: part for i, part in enumerate(parts) if part}
        done: dict[int, Any] = {}
        budget = self.config.max_redispatches
        while pending:
            refs = {
                i: self.actors[i].generate.remote(part, adapter_version, None if seed is None else seed + i, *more)
                for i, part in pending.items()
            }
            deadline = time.monotonic() + self.config.rollout_timeout_s  # one watchdog for all workers
            results = {i: self._collect(ref, deadline) for i, ref in refs.items()}  # all in, then recover
            for i, error in results.items():
                if not isinstance(error, BaseException):
                    done[i] = error
                    del pending[i]
                    continue
                budget -= 1
                self.redispatches += 1
                if budget < 0:
                    raise RolloutFailedError(
                        f"rollout worker rlactors/rollout-{i}: generation failed after "
                        f"{self.config.max_redispatches} redispatches (max_redispatches); last error: {error}"
                    )
                log.warning("rollout worker %d failed (%s); redispatching its %d prompts", i, error, len(pending[i]))
                self._recover(i, error)
        batches = []
        for i in sorted(done):
            done[i].prompt_index += offsets[i]
            batches.append(done[i])
        return concat_batches(batches, pad_id=0)

    def _collect(self, ref: Any, deadline: float) -> Any:
        """The batch, or the exception that says the attempt must be redone."""
        import ray

        try:
            return ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            return TimeoutError(f"no result within rollout_timeout_s={self.config.rollout_timeout_s}")
        except ray.exceptions.RayActorError as err:
            return err
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, StaleAdapterError):
                return err.cause
            raise

    def _recover(self, index: int, error: BaseException) -> None:
        """Restarts a hung worker, waits for a dead one to come back, and reloads the adapter."""
        import ray

        actor = self.actors[index]
        if isinstance(error, TimeoutError):
            ray.kill(actor, no_restart=False)  # a hung call cannot be cancelled in place: restart the worker
        name, limit = f"rlactors/rollout-{index}", self.config.rollout_timeout_s
        try:
            _build_when_back(actor, time.monotonic() + limit)
            if self.adapter is not None:
                self._reload_if_lost(lambda: ray.get(actor.load_adapter.remote(self.adapter), timeout=limit))
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError) as err:
            raise RolloutFailedError(
                f"rollout worker {name} did not come back within rollout_timeout_s={limit} after: {error}"
            ) from err
        except ray.exceptions.RayActorError as err:
            raise RolloutFailedError(
                f"rollout worker {name} is dead and its restart budget (max_restarts={self.config.max_restarts}) "
                f"is spent; last error: {error}"
            ) from err
        self.restarts += 1  # dead, hung, or restarted while idle (a stale adapter says so)

    def prompt_logprobs(self, token_ids: list[int], num_scored: int) -> list[list[float]]:
        return self._each(lambda w: w.prompt_logprobs, token_ids, num_scored)


class LearnerGroup(WorkerGroup):
    """One learner, or several training one adapter data-parallel: each takes an even share of the
    batch, gradients are summed over a `torch.distributed` group, so all hold the same weights."""

    role = "learner"

    def build(self) -> list[int]:
        if len(self.actors) > 1:
            import ray

            address = ray.get(self.actors[0].rendezvous_address.remote())
            ray.get([actor.join_group.remote(address, len(self.actors)) for actor in self.actors])
        return super().build()

    def memory_need(self) -> MemoryNeed | None:
        """The tightest learner's `MemoryNeed` (least left for vLLM); None without CUDA."""
        needs = [need for need in self._each(lambda w: w.memory_need) if need is not None]
        return min(needs, key=lambda need: need.free_bytes - need.extra_bytes, default=None)

    def prepare(self, batch: RolloutBatch, step: int) -> list[Any]:
        """Starts every learner's passes ahead of `update` on its shard of `batch` (see
        `LearnerWorker.prepare`) and returns at once: ObjectRefs to wait on before the update. A
        learner in the driver process leaves them to its update (nothing would run alongside)."""
        if self.local is not None:
            return []
        return [a.prepare.remote(s, step) for a, s in zip(self.actors, self._shards(batch))]

    def update(self, batch: RolloutBatch, step: int) -> StepMetrics:
        if len(self.actors) <= 1:
            return self._each(lambda w: w.update, batch, step)[0]
        import ray

        from rlactors.core.records import BatchTotals

        shards = self._shards(batch)
        totals = BatchTotals.per_mini_batch(shards, self.config.micro_batch_size, self.config.num_mini_batches)
        return ray.get([a.update.remote(s, step, totals) for a, s in zip(self.actors, shards)])[0]

    def _shards(self, batch: RolloutBatch) -> list[RolloutBatch]:
        """Each learner's rows of `batch` (the whole batch for one learner)."""
        if len(self.actors) <= 1:
            return [batch]
        bounds = _split(list(range(batch.size)), len(self.actors))
        return [batch.rows(rows[0], rows[-1] + 1) if rows else batch.rows(0, 0) for rows in bounds]

    def beside(self, rollouts: RolloutGroup) -> bool:
        """Whether every rollout worker is an actor on a GPU that a learner actor of its node computes
        on (colocated), so CUDA IPC can carry adapters to all of them."""
        from rlactors.core.adapter import every_worker_beside_a_learner

        if not self.actors or not rollouts.actors:
            return False
        return every_worker_beside_a_learner(
            list(zip(rollouts.node_ids(), rollouts.gpus())), list(zip(self.node_ids(), self.gpus()))
        )

    def load_adapter(self, adapter: LoRAAdapter) -> None:
        """Every learner takes `adapter`'s weights (a caller's trained adapter the run goes on from)."""
        self._each(lambda w: w.load_adapter, adapter)

    def export_adapter(self, on_device: bool = False) -> Any:
        """The current adapter: an ObjectRef from an actor (stored once), or the record itself.
        `on_device`: every learner's `DeviceAdapter` instead (small records; the weights stay on the GPUs)."""
        if self.local is not None:
            return self.local.export_adapter()
        if on_device:
            return self._each(lambda w: w.share_adapter)
        return self.actors[0].export_adapter.remote()

    def save_adapter(self, path: str) -> str:
        return self._first(lambda w: w.save_adapter, path)

    def save_state(self, path: str) -> None:
        """Rank 0 writes the state (every learner holds the same)."""
        self._first(lambda w: w.save_state, path)

    def load_state(self, path: str) -> int:
        return self._each(lambda w: w.load_state, path)[0]


def _build_when_back(actor: Any, deadline: float) -> None:
    """Builds `actor`, asking again while Ray says it is restarting (ActorUnavailableError)."""
    import ray

    while True:
        try:
            ray.get(actor.build.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _split(items: list, parts: int) -> list[list]:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append(items[start:stop])
        start = stop
    return out


def _resolved(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """`args` as an actor's method receives them: Ray objects (an adapter from a learner actor) fetched."""
    import ray

    return tuple(ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args)
