"""Unsloth's export methods on a loader model: the adapter merged into the base weights, as an HF
folder (`save_pretrained_merged`, `push_to_hub_merged`) or a GGUF file (`save_pretrained_gguf`);
`rlactors export` does the same for a trained adapter folder.

The merge never touches the model: each merged weight is computed apart, W + scale * B @ A in
float32 (a 4-bit base weight dequantized first), then cast to the saved dtype. "merged_16bit" saves
the model's own dtype (bf16 / fp16 on a GPU; a float32 model on CPU stays float32, losing nothing).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from typing import Any

SAVE_METHODS = ("merged_16bit", "merged_4bit_forced", "lora")
GGUF_METHODS = {
    "not_quantized": "f16",
    "fast_quantized": "q8_0",
    "f16": "f16",
    "bf16": "bf16",
    "f32": "f32",
    "q8_0": "q8_0",
}


def merged_state_dict(model: Any) -> dict[str, Any]:
    """The base model's weights under their HF names with the active LoRA adapter merged in, on CPU,
    in the base model's compute dtype."""
    import torch
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = _compute_dtype(base)
    lora = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    out: dict[str, Any] = {}
    with torch.no_grad():
        for name, param in base.named_parameters():
            if ".lora_" in name:
                continue
            module_name, _, leaf = name.rpartition(".")
            weight = _dequantized(param).float()
            owner = module_name.removesuffix(".base_layer")
            if module_name.endswith(".base_layer") and leaf == "weight" and owner in lora:
                layer = lora[owner]
                for adapter in layer.active_adapters:
                    weight = weight + layer.get_delta_weight(adapter).float()
            out[f"{owner}.{leaf}"] = weight.to(dtype).cpu().contiguous()
    return out


def _compute_dtype(base: Any) -> Any:
    import torch

    dtype = getattr(base.config, "torch_dtype", None) or getattr(base, "dtype", None)
    return dtype if dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32


def _dequantized(param: Any) -> Any:
    if getattr(param, "quant_state", None) is None:
        return param.data
    import bitsandbytes.functional as bnb

    return bnb.dequantize_4bit(param.data, param.quant_state)


def save_pretrained_merged(
    model: Any, save_directory: str, tokenizer: Any = None, save_method: str = "merged_16bit", **_: Any
) -> str:
    """Unsloth's `model.save_pretrained_merged(dir, tokenizer, save_method=...)`: "merged_16bit" (an HF
    folder vLLM and transformers load without LoRA), "merged_4bit_forced" (the same, bitsandbytes
    4-bit; CUDA) or "lora" (the adapter alone, a PEFT folder)."""
    if save_method not in SAVE_METHODS:
        raise ValueError(f"save_method={save_method!r}: use one of {SAVE_METHODS}")
    os.makedirs(save_directory, exist_ok=True)
    if save_method == "lora":
        model.save_pretrained(save_directory)
    elif save_method == "merged_16bit":
        write_merged(model, save_directory)
    else:
        _write_merged_4bit(model, save_directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(save_directory)
    return save_directory


def write_merged(model: Any, save_directory: str) -> str:
    """The merged weights (safetensors, sharded past 5 GB) and the base model's config, without its
    quantization settings."""
    from huggingface_hub import save_torch_state_dict

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    state = merged_state_dict(model)
    config = copy.deepcopy(base.config)
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    config.dtype = next(iter(state.values())).dtype
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to the embeddings, which are saved
    save_torch_state_dict(state, save_directory, max_shard_size="5GB")
    config.save_pretrained(save_directory)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(save_directory)
    return save_directory


def _write_merged_4bit(model: Any, save_directory: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            "save_method='merged_4bit_forced' quantizes with bitsandbytes, which needs a CUDA GPU: "
            "use save_method='merged_16bit' here"
        )
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    with tempfile.TemporaryDirectory() as merged:
        write_merged(model, merged)
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
        AutoModelForCausalLM.from_pretrained(merged, quantization_config=quantization).save_pretrained(save_directory)


def save_pretrained_gguf(
    model: Any, save_directory: str, tokenizer: Any = None, quantization_method: str = "fast_quantized", **_: Any
) -> str:
    """Unsloth's `model.save_pretrained_gguf(dir, tokenizer, quantization_method=...)`: the merged model as
    one GGUF file, written with the `gguf` package ("not_quantized" is f16, "fast_quantized" q8_0; also
    "f16", "bf16", "f32", "q8_0"). Llama, Qwen2 and SmolLM2 (a Llama). Returns the file's path."""
    from rlactors.loader.gguf_export import write_gguf

    if quantization_method not in GGUF_METHODS:
        raise ValueError(
            f"quantization_method={quantization_method!r}: use one of {sorted(GGUF_METHODS)} "
            "(k-quants such as q4_k_m need llama.cpp's quantize on the f16 file)"
        )
    if tokenizer is None:
        raise ValueError("save_pretrained_gguf needs the tokenizer (the GGUF file carries the vocabulary)")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    quant = GGUF_METHODS[quantization_method]
    os.makedirs(save_directory, exist_ok=True)
    path = os.path.join(save_directory, f"model-{quant.upper()}.gguf")
    return write_gguf(merged_state_dict(model), base.config, tokenizer, path, quant)


def push_to_hub_merged(
    model: Any,
    repo_id: str,
    tokenizer: Any = None,
    save_method: str = "merged_16bit",
    token: str | None = None,
    private: bool | None = None,
    **_: Any,
) -> str:
    """Unsloth's `model.push_to_hub_merged(repo, tokenizer, save_method=..., token=...)`: saves as
    `save_pretrained_merged` does, then uploads the folder. Any failure to reach the Hub is one error
    that says nothing was uploaded."""
    from huggingface_hub import HfApi

    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise ValueError(f"push_to_hub_merged({repo_id!r}): no token: pass token=... or set HF_TOKEN")
    folder = tempfile.mkdtemp(prefix="rlactors-push-")
    try:
        save_pretrained_merged(model, folder, tokenizer, save_method)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=folder)
        except Exception as err:
            raise ConnectionError(
                f"push_to_hub_merged({repo_id!r}): the Hugging Face Hub could not be reached or refused "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); nothing was uploaded. "
                "Save locally with save_pretrained_merged and upload when online"
            ) from err
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return f"https://huggingface.co/{repo_id}"
