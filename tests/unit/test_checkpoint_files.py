"""Checkpoint folders: atomic commit, retention, partial folders never picked."""

import os

import pytest

from rlactors.trainer import checkpoints as checkpoint

pytestmark = pytest.mark.unit


def _complete(output_dir, step, keep_last=10, protect=()):
    tmp = checkpoint.temp_dir(str(output_dir), step)
    checkpoint.write_json(os.path.join(tmp, checkpoint.STATE_DIR, "driver.json"), {"step": step})
    return checkpoint.commit(str(output_dir), tmp, step, keep_last, protect)


def test_partial_and_temporary_folders_are_never_resumed(tmp_path):
    _complete(tmp_path, 2)
    checkpoint.temp_dir(str(tmp_path), 3)  # a crash mid-write leaves only the temporary folder
    os.makedirs(tmp_path / "checkpoint-4" / checkpoint.STATE_DIR)  # no driver.json: incomplete
    (tmp_path / "checkpoint-4" / "model.pkl").write_bytes(b"not loaded")
    assert checkpoint.latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")


def test_keep_last_keeps_exactly_k_and_never_the_protected_one(tmp_path):
    protected = _complete(tmp_path, 1)
    for step in (2, 3, 4):
        _complete(tmp_path, step, keep_last=2, protect=(protected, None))
    kept = sorted(os.listdir(tmp_path))
    assert kept == ["checkpoint-1", "checkpoint-3", "checkpoint-4"]
    _complete(tmp_path, 5, keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4", "checkpoint-5"]
