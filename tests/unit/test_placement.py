"""GPU shares from gpu_memory_utilization, and the CPU layout."""

import pytest

from rlactors.core.config import GRPOConfig
from rlactors.distributed.placement import plan

pytestmark = pytest.mark.unit
BASE = {"dataset": "d.jsonl", "reward_funcs": ["rlactors.reward_funcs:exact_answer"]}


def test_colocate_splits_each_gpu_by_gpu_memory_utilization():
    layout = plan(GRPOConfig(**BASE, gpu_memory_utilization=0.6), use_gpus=True)
    assert layout.bundles == [{"GPU": 1.0, "CPU": 1.0}]
    (rollout,), (learner,) = layout.rollout, layout.learner
    assert rollout.num_gpus == 0.6 and learner.num_gpus == pytest.approx(0.4)
    assert rollout.bundle == learner.bundle == 0


def test_disaggregate_gives_whole_gpus():
    layout = plan(GRPOConfig(**BASE, placement="disaggregate", num_rollout_workers=2), use_gpus=True)
    assert layout.total("GPU") == 3
    assert [s.num_gpus for s in layout.rollout + layout.learner] == [1.0, 1.0, 1.0]
    assert [s.bundle for s in layout.rollout + layout.learner] == [0, 1, 2]


def test_cpu_cluster_shares_one_cpu_bundle_and_leaves_cores_for_rewards():
    layout = plan(GRPOConfig(**BASE), use_gpus=False)
    assert layout.bundles == [{"CPU": 1.0}] and layout.total("GPU") == 0
    assert layout.rollout[0].num_cpus + layout.learner[0].num_cpus == 1.0


def test_in_process_workers_need_no_bundle():
    layout = plan(GRPOConfig(**BASE, num_rollout_workers=0, num_learner_workers=0), use_gpus=False)
    assert layout.bundles == [] and layout.rollout == [] and layout.learner == []


def test_reward_models_sit_beside_the_first_learner_within_its_bundle():
    for placement in ("colocate", "disaggregate"):
        layout = plan(GRPOConfig(**BASE, placement=placement, num_learner_workers=2), use_gpus=True, reward_models=2)
        first = layout.learner[0]
        assert [s.bundle for s in layout.reward_models] == [first.bundle] * 2
        for bundle, capacity in enumerate(layout.bundles):
            used = sum(s.num_gpus for s in layout.rollout + layout.learner + layout.reward_models if s.bundle == bundle)
            assert used <= capacity["GPU"] + 1e-9, (placement, bundle)
        assert layout.learner[1].num_gpus - first.num_gpus == pytest.approx(0.02)  # taken from the first only
    alone = plan(GRPOConfig(**BASE, num_rollout_workers=0, num_learner_workers=0), use_gpus=False, reward_models=1)
    assert [(s.bundle, s.num_gpus, s.num_cpus) for s in alone.reward_models] == [(-1, 0.0, 0.0)]  # no group


def test_auto_memory_share_leaves_the_learner_its_measured_need():
    from rlactors.distributed.memory import GIB, MemoryNeed, MemoryPlanError, vllm_share

    config = GRPOConfig(**BASE, gpu_memory_utilization="auto")
    layout = plan(config, use_gpus=True)  # logical GPU shares only; vLLM is told the measured one
    assert layout.rollout[0].num_gpus + layout.learner[0].num_gpus == 1.0
    alone = MemoryNeed(extra_bytes=28 * GIB, free_bytes=138 * GIB, total_bytes=140 * GIB)
    assert vllm_share(alone, margin_bytes=3 * GIB) == 0.76  # (138 - 28 - 3) / 140, rounded down
    shared = MemoryNeed(extra_bytes=28 * GIB, free_bytes=70 * GIB, total_bytes=140 * GIB)  # another process holds 68
    assert vllm_share(shared, margin_bytes=3 * GIB) == 0.27  # only what is free is promised
    with pytest.raises(
        MemoryPlanError,
        match=r"needs 75.0 GiB more while training, and 78.0 GiB of the GPU's "
        r"80.0 GiB are free.*lower micro_batch_size",
    ):
        vllm_share(MemoryNeed(extra_bytes=75 * GIB, free_bytes=78 * GIB, total_bytes=80 * GIB))
    # vLLM asleep while the learner trains: only what the learner keeps between updates stays beside vLLM
    asleep = MemoryNeed(extra_bytes=28 * GIB, free_bytes=70 * GIB, total_bytes=140 * GIB, kept_bytes=2 * GIB)
    assert vllm_share(asleep, margin_bytes=3 * GIB, asleep_while_training=True) == 0.46  # (70 - 2 - 3) / 140
    assert vllm_share(asleep, margin_bytes=3 * GIB) == 0.27
    with pytest.raises(MemoryPlanError, match=r"needs 76.0 GiB more while training"):  # the update alone does not fit
        vllm_share(
            MemoryNeed(extra_bytes=76 * GIB, free_bytes=78 * GIB, total_bytes=80 * GIB, kept_bytes=GIB),
            asleep_while_training=True,
        )
    with pytest.raises(ValueError, match=r"gpu_memory_utilization='half': .*or \"auto\""):
        GRPOConfig(**BASE, gpu_memory_utilization="half")


def test_cuda_ipc_only_when_every_rollout_worker_shares_a_learners_gpu():
    from rlactors.core.adapter import DeviceAdapter, every_worker_beside_a_learner, pick_for_gpu

    learners = [("node-a", "gpu-0"), ("node-a", "gpu-1")]
    assert every_worker_beside_a_learner([("node-a", "gpu-0"), ("node-a", "gpu-1")], learners)  # colocated
    assert not every_worker_beside_a_learner([("node-a", "gpu-2"), ("node-a", "gpu-3")], learners)  # disaggregated
    assert not every_worker_beside_a_learner([("node-b", "gpu-0")], learners)  # same UUID text, other node
    assert not every_worker_beside_a_learner([("node-a", None)], [("node-a", None)])  # CPU
    assert not every_worker_beside_a_learner([], learners)
    records = [DeviceAdapter(1, [], {}, "", gpu, handle=()) for _, gpu in learners]
    assert pick_for_gpu(records, "gpu-1") is records[1]
    with pytest.raises(RuntimeError, match=r"no learner shares GPU gpu-7 .*set adapter_sync: object_store"):
        pick_for_gpu(records, "gpu-7")
