"""The loader's four usage examples run as a user would run them."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.vllm
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_loader_quickstart_runs_all_four(smollm2):
    done = subprocess.run(
        [sys.executable, "examples/loader_quickstart.py", smollm2],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("== ")]
    assert [line.split(":")[0] for line in lines] == [
        "== basic_loading",
        "== memory_split",
        "== complete_grpo_setup",
        "== sampling_params",
    ]
    assert "Paris" in lines[0] and "rlactors-v" in lines[2]
