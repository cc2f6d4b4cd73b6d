"""Checkpoints: PEFT adapter folders plus the state to resume exactly. Safetensors + JSON only.

    output_dir/checkpoint-<step>/
        adapter_model.safetensors, adapter_config.json   <- PeftModel / vLLM load this folder as is
        trainer_state/optimizer.safetensors              <- AdamW moments and step counters
        trainer_state/learner.json                       <- version, param groups, schedule, RNG
        trainer_state/driver.json                        <- step, data position, run fingerprint

A checkpoint is written under a temporary name and renamed into place when complete, so a
crash mid-write never leaves a folder that `latest_checkpoint` would pick.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rlactors.core.config import ConfigError
from rlactors.trainer.errors import TrainingError
from rlactors.workers.learner_state import STATE_DIR, read_json, write_json

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig

__all__ = ["STATE_DIR", "commit", "latest_checkpoint", "list_checkpoints", "read_json", "temp_dir", "write_json"]

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def temp_path(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, f".tmp-checkpoint-{step}")


def temp_dir(output_dir: str, step: int) -> str:
    path = temp_path(output_dir, step)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.join(path, STATE_DIR))
    return path


def commit(output_dir: str, tmp: str, step: int, keep_last: int, protect: Sequence[str | None] = ()) -> str:
    """Renames `tmp` to checkpoint-<step>, then keeps only the newest `keep_last` and those in `protect`
    (the one resumed from, the best model)."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    kept = {os.path.abspath(path) for path in protect if path is not None}
    for _, old in list_checkpoints(output_dir)[:-keep_last]:
        if os.path.abspath(old) not in kept:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints as (step, path), oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_RE.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, STATE_DIR, "driver.json")):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def save_final(adapter: Any, output_dir: str) -> str:
    """The trained adapter (a `LoRAAdapter`, or its Ray object) as the PEFT folder output_dir/final."""
    import ray

    if isinstance(adapter, ray.ObjectRef):
        adapter = ray.get(adapter)
    return adapter.save(os.path.join(output_dir, "final"))


def resume_path(config: Any) -> str | None:
    """The checkpoint `resume_from_checkpoint` names: for "auto", the newest in output_dir."""
    target = config.resume_from_checkpoint
    return latest_checkpoint(config.output_dir) if target == "auto" else target


def resume_target(config: GRPOConfig, resume_from_checkpoint: str | bool) -> str:
    """`train(resume_from_checkpoint=...)` as transformers' Trainer reads it, as the config's value:
    True is the newest checkpoint in output_dir (an error where there is none), a str a checkpoint folder."""
    if resume_from_checkpoint is True:
        if latest_checkpoint(config.output_dir) is None:
            raise ConfigError(
                f"train(resume_from_checkpoint=True): no checkpoint in output_dir={config.output_dir!r}; "
                "call train() to start afresh, or pass a checkpoint folder"
            )
        return "auto"
    if not isinstance(resume_from_checkpoint, str) or not os.path.isdir(resume_from_checkpoint):
        raise ConfigError(
            f"train(resume_from_checkpoint={resume_from_checkpoint!r}): pass True (the newest checkpoint in "
            "output_dir) or an existing checkpoint folder such as output_dir/checkpoint-10"
        )
    return resume_from_checkpoint


def driver_state(step: int, config: Any, dataset_fingerprint: str, sampler: dict[str, Any]) -> dict[str, Any]:
    """What the driver writes into a checkpoint: where it was, and what a resume must match."""
    return {
        "step": step,
        "dataset_fingerprint": dataset_fingerprint,
        "sampler": sampler,
        "num_generations": config.num_generations,
        "prompts_per_step": config.prompts_per_step,
    }


def save(
    output_dir: str,
    step: int,
    keep_last: int,
    protect: Sequence[str | None],
    write_learners: Callable[[str], None],
    driver: dict[str, Any],
) -> str:
    """Writes checkpoint-<step>: the learners' state (`write_learners(folder)`) and the driver's, under a
    temporary name renamed into place when complete. A full disk or a lost mount removes the partial
    folder and leaves the previous checkpoint as it was."""
    try:
        tmp = temp_dir(output_dir, step)
        write_learners(tmp)
        write_json(os.path.join(tmp, STATE_DIR, "driver.json"), driver)
    except OSError as err:
        shutil.rmtree(temp_path(output_dir, step), ignore_errors=True)
        previous = latest_checkpoint(output_dir)
        raise TrainingError(
            f"could not write checkpoint-{step} to output_dir={output_dir} ({_os_reason(err)}); the "
            f"previous checkpoint {previous or '(none yet)'} is intact. Free space or point output_dir at a "
            "larger volume, then re-run with resume_from_checkpoint: auto"
        ) from err
    return commit(output_dir, tmp, step, keep_last, protect=protect)


def resumable(path: str, config: GRPOConfig, fingerprint: str) -> dict[str, Any]:
    """The driver state of checkpoint `path`, once it is known to fit this run (batch shape, dataset)."""
    driver = read_json(os.path.join(path, STATE_DIR, "driver.json"))
    for key in ("num_generations", "prompts_per_step"):
        if driver[key] != getattr(config, key):
            raise ConfigError(
                f"{key}={getattr(config, key)} but the checkpoint {path} was trained with "
                f"{driver[key]}: resume with the same value, or start a new output_dir"
            )
    if driver["dataset_fingerprint"] != fingerprint:
        raise ConfigError(
            f"the dataset differs from the one checkpoint {path} was trained on: resume "
            "with the same dataset, or start a new output_dir"
        )
    return driver


def save_model(output_dir: str, run_dir: str, model: Any, processing_class: Any) -> str:
    """`GRPOTrainer.save_model`: the caller's trained model (`model`), else the run's `final/`
    adapter, as a PEFT folder with the tokenizer, as TRL's `save_model` writes it."""
    if model is not None:
        model.save_pretrained(output_dir)
    else:
        final = os.path.join(run_dir, "final")
        if not os.path.isdir(final):
            raise TrainingError(f"save_model: nothing trained yet ({final} does not exist): call train() first")
        if os.path.abspath(final) != os.path.abspath(output_dir):
            shutil.copytree(final, output_dir, dirs_exist_ok=True)
    if processing_class is not None:
        processing_class.save_pretrained(output_dir)
    return output_dir


def _os_reason(err: BaseException) -> str:
    """The OS error's own words (also when it arrives wrapped by Ray from an actor)."""
    cause = getattr(err, "cause", None) or err
    return getattr(cause, "strerror", None) or str(cause).strip().splitlines()[-1]
