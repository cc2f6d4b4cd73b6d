"""GPU (or CPU) shares for rollout and learner actors, and the placement group that holds them.

colocate: one bundle per GPU; the rollout actor takes `gpu_memory_utilization` of it and the
learner the rest (vLLM is told the same fraction of memory). disaggregate: a whole GPU each.
On a cluster without GPUs the same layout is made of CPUs: a colocated pair shares one CPU
bundle, leaving the other cores for reward tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig

CPUS_PER_GPU_BUNDLE = 1.0
REWARD_MODEL_GPU = 0.01  # a reward-model actor's logical share of the first learner's GPU


class PlacementError(RuntimeError):
    """The cluster cannot give the resources the config asks for."""


@dataclass(frozen=True)
class Share:
    """One worker's resources inside bundle `bundle`."""

    bundle: int
    num_cpus: float
    num_gpus: float


@dataclass(frozen=True)
class Layout:
    bundles: list[dict[str, float]]
    rollout: list[Share]
    learner: list[Share]
    use_gpus: bool
    reward_models: list[Share] = field(default_factory=list)  # bundle -1: outside the placement group

    def total(self, resource: str) -> float:
        return sum(b.get(resource, 0.0) for b in self.bundles)


def plan(config: GRPOConfig, use_gpus: bool, reward_models: int = 0) -> Layout:
    """The bundles and each worker's share of them; `reward_models` actors go beside the first
    learner (else the first rollout worker), their logical GPU shares taken from its."""
    layout = _workers(config, use_gpus)
    if not reward_models:
        return layout
    host = (layout.learner or layout.rollout or [Share(-1, 0.0, REWARD_MODEL_GPU * reward_models)])[0]
    share = Share(host.bundle, 0.0, REWARD_MODEL_GPU if use_gpus else 0.0)
    smaller = replace(host, num_gpus=max(0.0, host.num_gpus - share.num_gpus * reward_models))
    learner = [smaller if s is host else s for s in layout.learner]
    rollout = [smaller if s is host else s for s in layout.rollout]
    return replace(layout, learner=learner, rollout=rollout, reward_models=[share] * reward_models)


def _workers(config: GRPOConfig, use_gpus: bool) -> Layout:
    n_roll, n_learn = config.num_rollout_workers, config.num_learner_workers
    if config.placement == "colocate":
        count = max(n_roll, n_learn)
        if use_gpus:
            bundle = {"GPU": 1.0, "CPU": CPUS_PER_GPU_BUNDLE}
            share = 0.5 if config.gpu_memory_utilization == "auto" else config.gpu_memory_utilization
            roll_gpu, learn_gpu = share, 1.0 - share  # logical shares: vLLM is told its memory separately
        else:
            bundle, roll_gpu, learn_gpu = {"CPU": 1.0}, 0.0, 0.0
        cpus = bundle["CPU"] / 2
        return Layout(
            bundles=[dict(bundle) for _ in range(count)],
            rollout=[Share(i, cpus, roll_gpu) for i in range(n_roll)],
            learner=[Share(i, cpus, learn_gpu) for i in range(n_learn)],
            use_gpus=use_gpus,
        )
    bundle = {"GPU": 1.0, "CPU": CPUS_PER_GPU_BUNDLE} if use_gpus else {"CPU": 1.0}
    gpu = 1.0 if use_gpus else 0.0
    return Layout(
        bundles=[dict(bundle) for _ in range(n_roll + n_learn)],
        rollout=[Share(i, bundle["CPU"], gpu) for i in range(n_roll)],
        learner=[Share(n_roll + i, bundle["CPU"], gpu) for i in range(n_learn)],
        use_gpus=use_gpus,
    )


def reserve(layout: Layout, timeout_s: float, name: str = "rlactors", strategy: str = "PACK") -> Any:
    """Creates the placement group; fails within `timeout_s` with requested vs available resources."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    if not layout.bundles:
        return None
    group = placement_group(layout.bundles, strategy=strategy, name=name)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        cluster = ray.cluster_resources()
        raise PlacementError(
            f"placement group of {len(layout.bundles)} bundle(s) {layout.bundles[0]} not granted within "
            f"{timeout_s:.0f}s (strategy {strategy}): requested GPU={layout.total('GPU'):g} "
            f"CPU={layout.total('CPU'):g}, the cluster "
            f"has GPU={cluster.get('GPU', 0):g} CPU={cluster.get('CPU', 0):g} (available now: "
            f"{ray.available_resources()}). Lower num_rollout_workers / num_learner_workers, use placement: "
            "colocate, or add nodes (STRICT_SPREAD needs a node per bundle)"
        )
    return group


def release(group: Any) -> None:
    if group is None:
        return
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(group)


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0
