"""Starting the learner and rollout groups.

Both start at once when vLLM's share of the GPU is a number: the learner loads its model while
vLLM starts, and the start costs the slower of the two instead of their sum (on one H200, 19 s of
learner beside 35 s of vLLM); also when vLLM is in this process (`num_rollout_workers: 0`): the
learners are asked for once Ray is up, and vLLM's import, begun beside Ray's start, ends meanwhile
(on one H100 the first step came 27.7 s after launch, against 32.5 s with a rollout actor). With
`gpu_memory_utilization: auto` the learner starts first: vLLM's share is measured on it
(`rlactors.distributed.memory`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from rlactors.core.timing import timed
from rlactors.distributed import memory
from rlactors.distributed.environments import EnvironmentWorkers
from rlactors.distributed.groups import LearnerGroup, RewardModelGroup, RolloutGroup
from rlactors.distributed.reward_models import RewardModel
from rlactors.trainer.startup import StartupClock
from rlactors.workers.learner import LearnerWorker
from rlactors.workers.rollout import RolloutWorker

if TYPE_CHECKING:
    from rlactors.agent.episodes import AgentSpec
    from rlactors.core.config import GRPOConfig
    from rlactors.distributed.placement import Layout
    from rlactors.trainer.agent_setup import AgentSetup
    from rlactors.trainer.model_source import ModelSource


def host_environments(cfg: GRPOConfig, agent: AgentSetup) -> tuple[EnvironmentWorkers | None, AgentSpec | None]:
    """The environment workers (`environment_workers: N`) and the AgentSpec whose environments live
    in them; (None, the spec) when environments stay in the rollout workers."""
    if not cfg.environment_workers or agent.spec is None:
        return None, agent.spec
    hosts = EnvironmentWorkers(cfg, agent.spec, agent.environment_types)
    return hosts, hosts.spec


@dataclass
class Workers:
    learners: LearnerGroup
    rollouts: RolloutGroup
    learner_pids: list[int]
    rollout_pids: list[int]
    reward_models: RewardModelGroup | None


def start_workers(
    cfg: GRPOConfig,
    layout: Layout,
    placement_group: Any,
    source: ModelSource,
    agent: Any,
    clock: StartupClock,
    reward_models: Sequence[RewardModel] = (),
    vllm_import: Future | None = None,
) -> Workers:
    """Builds the learner group, the rollout group (`agent`: the AgentSpec or None) and the reward
    models' actors (`rlactors.distributed.reward_models`), these with the learners. `vllm_import`:
    vLLM's import for an engine in this process, still running (awaited once the learners are asked
    for); its result: the children building that engine's LoRA kernels, or None."""
    learner_cls = partial(LearnerWorker, model=source.model) if source.in_process else LearnerWorker
    rollout_cls = partial(RolloutWorker, engine=source.engine) if source.in_process else RolloutWorker
    source.release()
    learners = LearnerGroup(learner_cls, cfg, layout.learner, placement_group)
    scorers = None
    if reward_models:
        group = placement_group if layout.reward_models[0].bundle >= 0 else None
        sources = [(model.folder(cfg.output_dir), model.tokenizer) for model in reward_models]
        scorers = RewardModelGroup(cfg, sources, layout.reward_models, group)

    def build_learners() -> list[int]:  # and the reward models beside them (before vLLM's share is measured)
        if scorers is None:
            return learners.build()
        with ThreadPoolExecutor(1) as pool:
            loading = pool.submit(scorers.build)
            pids = learners.build()
            loading.result()
        return pids

    extra: dict[str, Any] = {"agent": agent} if agent is not None else {}

    def rollout_group(share: float) -> RolloutGroup:
        config = cfg.model_copy(update={"gpu_memory_utilization": share})
        return RolloutGroup(rollout_cls, config, layout.rollout, placement_group, cfg.max_restarts, **extra)

    learners_said = f"loading the model in {max(1, cfg.num_learner_workers)} learner(s)"
    vllm_said = f"starting vLLM in {max(1, cfg.num_rollout_workers)} rollout worker(s)"
    waited: dict[str, float] = {}

    def imported() -> None:  # what is left of vLLM's import in this process, and its kernels' children
        if vllm_import is not None:
            with timed(waited, "import vLLM"):
                prebuild = vllm_import.result()
            if prebuild is not None:
                extra["prebuild"] = prebuild

    if cfg.gpu_memory_utilization == "auto" or not (layout.learner or layout.rollout):
        # both in this process (tests, a caller's model): one after the other
        with clock.phase("learner", learners_said):
            learner_pids = build_learners()
        imported()
        rollouts = rollout_group(memory.share_for_vllm(cfg, learners, layout.use_gpus))
        with clock.phase("vLLM", vllm_said):
            say_first_kernel_builds(rollouts, cfg.vllm_prebuild_lora_kernels, "prebuild" in extra)
            rollout_pids = rollouts.build()
    else:
        with clock.phase("learner and vLLM", f"{learners_said}, {vllm_said}, together"):
            with ThreadPoolExecutor(1) as pool:
                learner_build = pool.submit(build_learners)
                imported()  # the learners' processes load meanwhile
                rollouts = rollout_group(float(cfg.gpu_memory_utilization))
                say_first_kernel_builds(rollouts, cfg.vllm_prebuild_lora_kernels, "prebuild" in extra)
                rollout_pids = rollouts.build()
                learner_pids = learner_build.result()
    vllm_role = "vLLM worker" if rollouts.local is None else "vLLM in this process"
    clock.workers({vllm_role: {**rollouts.startup_phases(), **waited}, "learner": learners.startup_phases()})
    go_on_from_callers_adapter(source, learners, rollouts)
    return Workers(learners, rollouts, learner_pids, rollout_pids, scorers)


def go_on_from_callers_adapter(source: ModelSource, learners: LearnerGroup, rollouts: RolloutGroup) -> None:
    """A caller's model that holds a trained adapter (a run before, a PEFT folder loaded): the learners
    train on from it and vLLM samples the first step under it, as version 0."""
    adapter = source.starting_adapter()
    if adapter is None:
        return
    if not source.in_process:  # learner actors load the base with a fresh adapter
        learners.load_adapter(adapter)
    rollouts.load_adapter(adapter)
    print(f"rlactors: going on from the adapter the model holds ({adapter.nbytes() / 2**20:.1f} MiB)", flush=True)


def say_first_kernel_builds(rollouts: RolloutGroup, prebuild: bool, building: bool = False) -> None:
    """Says, before the wait, that this start builds vLLM's LoRA kernels (none in Triton's cache on
    the first rollout worker's machine): the longest part of a first start on a GPU. `prebuild`:
    `vllm_prebuild_lora_kernels`, child processes build most of them while vLLM is imported.
    `building`: the driver's import started such children already (the cache may hold some by now)."""
    if building or rollouts.lora_kernel_builds() == 0:
        where = "in child processes while vLLM is imported and the rest " if prebuild else ""
        print(
            f"rlactors: first start of vLLM with LoRA on this machine: Triton builds its LoRA kernels, {where}as "
            "vLLM starts and in the first steps with the adapter (tens of seconds on an H100 or H200; later starts "
            "load them from TRITON_CACHE_DIR)",
            flush=True,
        )
