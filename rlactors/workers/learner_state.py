"""A learner's state in a checkpoint folder, to resume exactly: the adapter as a PEFT folder, AdamW's
moments and step counters, the schedule and the RNGs. Safetensors + JSON only.

    <checkpoint>/adapter_model.safetensors, adapter_config.json
    <checkpoint>/trainer_state/optimizer.safetensors    <- AdamW moments and step counters, RNG states
    <checkpoint>/trainer_state/learner.json             <- version, param groups, schedule, Python RNG, entropy bonus
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlactors.workers.learner import LearnerWorker

STATE_DIR = "trainer_state"


def write_json(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)


def read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def save_learner_state(path: str, learner: LearnerWorker) -> None:
    import random

    import torch

    from rlactors.core.adapter import export_adapter, save_tensors

    export_adapter(learner.model, learner.version).save(path)
    state = learner.optimizer.state_dict()
    tensors = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            # bitsandbytes' 8-bit and paged AdamW nest their quantization state one level down
            for key, item in value.items() if isinstance(value, dict) else [(None, value)]:
                name_key = name if key is None else f"{name}/{key}"
                tensors[f"{index}.{name_key}"] = torch.as_tensor(item).detach().cpu().contiguous()
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state()
    save_tensors(tensors, os.path.join(path, STATE_DIR, "optimizer.safetensors"))
    py_state = random.getstate()
    write_json(
        os.path.join(path, STATE_DIR, "learner.json"),
        {
            "version": learner.version,
            "optimizer_steps": learner.optimizer_steps,
            "param_groups": state["param_groups"],
            "scheduler": {k: v for k, v in learner.scheduler.state_dict().items() if k != "lr_lambdas"},
            "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
            "entropy_bonus": learner.entropy_bonus.state(),
        },
    )


def load_learner_state(path: str, learner: LearnerWorker) -> None:
    import random

    import torch
    from safetensors.torch import load_file

    from rlactors.core.adapter import LoRAAdapter

    load_adapter_weights(learner.model, LoRAAdapter.load(path).tensors)
    meta = read_json(os.path.join(path, STATE_DIR, "learner.json"))
    tensors = load_file(os.path.join(path, STATE_DIR, "optimizer.safetensors"))
    slots: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("rng."):
            continue
        index, name = key.split(".", 1)
        value = value.to(learner.device) if name != "step" else value
        outer, _, inner = name.partition("/")
        slot = slots.setdefault(int(index), {})
        if inner:
            slot.setdefault(outer, {})[inner] = value
        else:
            slot[name] = value
    learner.optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    learner.scheduler.load_state_dict({**learner.scheduler.state_dict(), **meta["scheduler"]})
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if "rng.torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"])
    version, state, gauss = meta["python_rng"]
    random.setstate((version, tuple(state), gauss))
    learner.version = meta["version"]
    learner.optimizer_steps = meta["optimizer_steps"]
    learner.entropy_bonus.load(meta.get("entropy_bonus", {}))


def load_adapter_weights(model: Any, tensors: dict[str, Any]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, tensors)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"checkpoint adapter has tensors the model lacks: {unexpected[:3]}")
