"""resume_from_checkpoint: auto continues a stopped run where its newest complete checkpoint left it."""

import json
import os

import pytest

from rlactors import GRPOConfig, GRPOTrainer
from rlactors.core.config import ConfigError

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def vowels(prompts, completions, **_):
    return [sum(ch in "aeiou" for ch in c) / 5 for c in completions]


def _run(model, output_dir, train_kwargs=None, **kw):
    values = dict(
        model_name=model,
        max_seq_length=128,
        max_prompt_length=32,
        max_completion_length=8,
        max_lora_rank=16,
        lora_r=8,
        num_generations=2,
        prompts_per_step=2,
        learning_rate=1e-2,
        gradient_checkpointing=False,
        engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": 2**28},
        output_dir=str(output_dir),
        save_steps=1,
        keep_last=2,
        progress_bar=False,
        report_to=["jsonl"],
        num_rollout_workers=0,
        num_learner_workers=0,
        resume_from_checkpoint="auto",
    )
    values.update(kw)
    rows = [{"prompt": f"Name a colour, number {i}."} for i in range(8)]
    return GRPOTrainer(GRPOConfig(**values), reward_funcs=[vowels], train_dataset=rows).train(**(train_kwargs or {}))


def test_resubmitted_run_continues_without_repeating_steps(ray_cluster, tiny_llama, tmp_path, capsys):
    _run(tiny_llama, tmp_path, max_steps=2)  # "auto" with no checkpoint yet: a fresh start
    assert (tmp_path / "checkpoint-1").is_dir() and (tmp_path / "checkpoint-2").is_dir()
    (tmp_path / "checkpoint-2" / "trainer_state" / "evil.pkl").write_bytes(b"\x80\x04never unpickled")
    # resumed as a TRL script resumes: train(resume_from_checkpoint=True), the config saying nothing
    _run(tiny_llama, tmp_path, {"resume_from_checkpoint": True}, max_steps=4, resume_from_checkpoint=None)
    assert "resumed from" in capsys.readouterr().out
    with open(tmp_path / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the first run, 3-4 from the second: none repeated
    # keep_last=2, and the checkpoint resumed from is kept while the run lasts
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("checkpoint-")) == [
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-4",
    ]


def test_resume_refuses_a_changed_group_size(ray_cluster, tiny_llama, tmp_path):
    _run(tiny_llama, tmp_path, max_steps=2)
    with pytest.raises(ConfigError, match="num_generations=4 but the checkpoint .* was trained with 2"):
        _run(tiny_llama, tmp_path, max_steps=3, num_generations=4)


def test_resume_diamond_with_real_vllm(ray_cluster, tiny_llama, tmp_path):
    """4 steps straight == 2 steps, stop, resume, 2 steps, with Ray actors (a fresh vLLM engine after
    the resume): same samples, rewards, tokens, lr, and the same loss and adapter, because
    deterministic_generation reseeds sampling per step."""
    import torch

    from rlactors.core.adapter import LoRAAdapter

    options = dict(
        deterministic_generation=True, max_completion_length=16, num_rollout_workers=1, num_learner_workers=1
    )
    straight = _run(tiny_llama, tmp_path / "straight", max_steps=4, **options)
    _run(tiny_llama, tmp_path / "split", max_steps=2, **options)
    split = _run(tiny_llama, tmp_path / "split", max_steps=4, **options)
    for key in ("reward", "num_tokens", "completions/mean_length", "learning_rate", "adapter_version"):
        assert [r[key] for r in split.rows] == [r[key] for r in straight.rows], key
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in split.rows] == pytest.approx([r[key] for r in straight.rows], rel=0.05), key
    ours, theirs = LoRAAdapter.load(split.final_adapter).tensors, LoRAAdapter.load(straight.final_adapter).tensors
    assert all(torch.allclose(ours[name], theirs[name], atol=1e-5) for name in theirs)
