"""Learning, proved on CPU: GRPO raises SmolLM2's reward on the arithmetic task within a few steps."""

import pytest

from rlactors.core.config_file import load_config
from rlactors.trainer.grpo_trainer import GRPOTrainer

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.ray]


def test_reward_rises_on_arithmetic(ray_cluster, smollm2, tmp_path):
    config = load_config(
        "examples/arithmetic_grpo.yaml",
        overrides=[
            f"model_name={smollm2}",
            "max_steps=6",
            # 2.5x the example's rate: the rise shows in 6 steps, not 30. Measured on this project's CPU
            # machine: 0.20, 0.25, 0.41, 0.28, 0.56, 0.61 (0.20, 0.22, ..., 0.45 in 8 steps at 2e-4)
            "learning_rate=5e-4",
            "prompts_per_step=4",  # half the example's batch: 13 s a step on 2 cores
            "save_steps=0",
            f"output_dir={tmp_path}",
            "progress_bar=false",
            "report_to=[jsonl]",
        ],
    )
    rows = GRPOTrainer(config).train().rows
    rewards = [r["reward"] for r in rows]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-3:]) / 3
    print(f"reward per step: {[round(r, 3) for r in rewards]}")
    assert last > first + 0.15, f"reward did not rise: first two steps {first:.3f}, last three {last:.3f}"
    assert all(r["sampling/logprob_mismatch"] < 1e-3 for r in rows)
