"""The command line on bad input: one line naming the problem and its fix, exit status 2, no traceback."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray


@pytest.mark.parametrize(
    "override, expected",
    [
        ("dataset=examples/no_such_file.jsonl", "dataset='examples/no_such_file.jsonl': no such file"),
        ("model_name=/no/such/model", "model_name='/no/such/model' is neither an existing folder nor a hub id"),
    ],
)
def test_a_missing_dataset_or_model_is_one_line_and_exit_2(override, expected, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlactors",
            "train",
            "examples/arithmetic_grpo.yaml",
            "--set",
            override,
            "--set",
            f"output_dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert expected in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("override", ["dataset=examples/no_such_file.jsonl", "model_name=/no/such/model"])
def test_a_mistyped_path_fails_before_ray_is_started(override, tmp_path, monkeypatch):
    """The path checks take no time: a run fails on them before it waits for Ray."""
    from rlactors.core.config_file import load_config
    from rlactors.distributed import cluster
    from rlactors.loader.model_files import ModelPathError
    from rlactors.trainer.grpo_trainer import GRPOTrainer
    from rlactors.trainer.prompts import DatasetError

    started = []
    monkeypatch.setattr(cluster, "connect", lambda: started.append(True) or False)
    config = load_config("examples/arithmetic_grpo.yaml", overrides=[override, f"output_dir={tmp_path / 'run'}"])
    with pytest.raises((DatasetError, ModelPathError), match="no such file|neither an existing folder"):
        GRPOTrainer(config).train()
    assert started == []
