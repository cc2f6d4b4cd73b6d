"""Multi-turn learning, proved on CPU: examples/calculator_tools.py, run as a user runs it, teaches
SmolLM2-135M to call the multiply tool with the question's numbers and to answer with its result."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.ray]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_reward_rises_with_the_calculator_tool(smollm2, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "examples/calculator_tools.py",
            "--model",
            smollm2,
            "--max-steps",
            "5",
            "--max-completion-length",
            "64",  # two turns fit; 96 (the example's default) costs CI 4 more minutes
            "--output-dir",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    rewards = [r["reward"] for r in rows]
    print(f"reward per step: {[round(r, 3) for r in rewards]}")
    # The rise from the first step to the last along the least-squares line through every step: one
    # noisy step (32 episodes) neither makes nor breaks it, as it would comparing single steps.
    steps = range(len(rewards))
    mean_x, mean_y = sum(steps) / len(rewards), sum(rewards) / len(rewards)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(steps, rewards)) / sum((x - mean_x) ** 2 for x in steps)
    rise = slope * (len(rewards) - 1)
    assert rise > 0.3, f"reward did not rise: {rise:.3f} along the fitted line (0.3 needed)"
    assert all(r["tools/call_frequency"] > 0.5 for r in rows)  # episodes do call the tool
    assert all(r["sampling/logprob_mismatch"] < 1e-3 for r in rows)  # on multi-turn samples too
