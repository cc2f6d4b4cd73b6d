"""examples/trl_style_grpo.py, a TRL/Unsloth-shaped script, run as a user runs it (tiny sizes)."""

import os
import subprocess
import sys

import pytest
import torch

from rlactors.core.adapter import LoRAAdapter

pytestmark = [pytest.mark.vllm, pytest.mark.ray]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_trl_style_example_trains_the_callers_model(smollm2, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "examples/trl_style_grpo.py",
            "--model",
            smollm2,
            "--max-steps",
            "1",
            "--rows",
            "16",
            "--output-dir",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== after training, 23 + 19 -> " in done.stdout
    # What the script's own model saved after train() is the trainer's final adapter, and it was trained.
    final = LoRAAdapter.load(str(out / "final")).tensors
    mine = LoRAAdapter.load(str(out / "lora")).tensors
    assert final.keys() == mine.keys() and all(torch.equal(final[k], mine[k]) for k in final)
    assert any(k.endswith("lora_B.weight") and final[k].abs().sum() > 0 for k in final)
    assert {"config.json", "model.safetensors"} <= set(os.listdir(out / "merged"))
