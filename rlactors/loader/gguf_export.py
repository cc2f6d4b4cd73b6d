"""Writes a merged Hugging Face causal LM to one GGUF file, without llama.cpp.

GGUF is what llama.cpp, Ollama and LM Studio run. Their own converter needs a llama.cpp checkout and
a model folder on disk; here the weights are already in memory (a LoRA merged into its base), so this
writes the file straight from the state dict with the `gguf` package, as `convert_hf_to_gguf.py` would:
the same tensor names, metadata keys, vocabulary layout and Q/K permutation. transformers reads the
result back (`from_pretrained(folder, gguf_file=name)`), which is how the unit tests check it.

Supported: model_type "llama" (SmolLM2 among them) and "qwen2", each with a byte-level BPE tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

import gguf
import numpy as np
import torch

logger = logging.getLogger(__name__)

ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}

# quantization -> (type of 2-D weights, file type stated in the metadata)
QUANTIZATIONS = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

# llama.cpp picks its pre-tokenizer (how text is split before BPE) by this name. A Split regex names
# one exactly; a bare byte-level pre-tokenizer is GPT-2's regex, which llama.cpp calls "smollm".
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_REGEX_PRE = {_QWEN2_SPLIT: "qwen2", _LLAMA3_SPLIT: "llama-bpe"}
_DEFAULT_PRE = {"llama": "llama-bpe", "qwen2": "qwen2"}


def write_gguf(
    state_dict: dict[str, torch.Tensor], config: Any, tokenizer: Any, path: str, quantization: str = "f16"
) -> str:
    """Writes the model (`state_dict` of HF names, `config`, fast `tokenizer`) to the GGUF file `path`.

    `quantization` is "f32", "f16", "bf16" or "q8_0"; 1-D tensors stay F32 whatever it is. Returns `path`.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"Cannot export model_type {model_type!r} to GGUF; supported: {sorted(ARCHITECTURES)}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown GGUF quantization {quantization!r}; choose one of {sorted(QUANTIZATIONS)}")
    arch = ARCHITECTURES[model_type]
    weight_type, file_type = QUANTIZATIONS[quantization]

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    _add_hyperparameters(writer, config, file_type)
    _add_vocabulary(writer, config, tokenizer)
    _add_tensors(writer, state_dict, config, arch, weight_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_hyperparameters(writer: gguf.GGUFWriter, config: Any, file_type: gguf.LlamaFileType) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    # transformers 5 keeps RoPE settings in `rope_parameters`; earlier versions in `rope_theta`/`rope_scaling`.
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        # llama.cpp needs extra tensors or keys for scaled RoPE; a file without them would run wrong.
        raise ValueError(f"Cannot export RoPE scaling {rope_type!r} to GGUF; only unscaled RoPE is supported")
    name = os.path.basename(str(getattr(config, "name_or_path", "") or "").rstrip("/")) or config.model_type

    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    # llama.cpp assumes hidden_size / heads unless told; SmolLM2-style configs may state their own.
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)


def _add_vocabulary(writer: gguf.GGUFWriter, config: Any, tokenizer: Any) -> None:
    """The "gpt2" (byte-level BPE) vocabulary, as llama.cpp's `_set_vocab_gpt2` writes it."""
    tokens, token_types = _token_list(tokenizer, config.vocab_size)
    with tempfile.TemporaryDirectory() as folder:
        # SpecialVocab reads merges, special ids and the chat template from files, as llama.cpp does;
        # config.json supplies the ids the tokenizer leaves unset (Qwen2's has no BOS token).
        tokenizer.save_pretrained(folder)
        config.to_json_file(os.path.join(folder, "config.json"))
        with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
            pre = _pre_tokenizer_name(json.load(f), config.model_type)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    # Whether BOS/EOS get added is read off the tokenizer's behaviour, which its files state only loosely.
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = len(full) > len(plain) and full[0] == tokenizer.bos_token_id
    special.add_special_token["eos"] = len(full) > len(plain) and full[-1] == tokenizer.eos_token_id

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    special.add_to_gguf(writer, quiet=True)


def _token_list(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id, padded to the embedding's rows, with llama.cpp's token types."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ValueError(f"The tokenizer has ids up to {max(by_id)}, past the model's vocab_size {vocab_size}")
    added = tokenizer.added_tokens_decoder
    tokens, token_types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            token_types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(token)
        if index not in added:
            token_types.append(gguf.TokenType.NORMAL)
        # llama.cpp also treats `<|...|>` as control even where the tokenizer forgot to mark it special.
        elif added[index].special or (token.startswith("<|") and token.endswith("|>")):
            token_types.append(gguf.TokenType.CONTROL)
        else:
            token_types.append(gguf.TokenType.USER_DEFINED)
    return tokens, token_types


def _pre_tokenizer_name(tokenizer_json: dict[str, Any], model_type: str) -> str:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    regexes = [step.get("pattern", {}).get("Regex") for step in steps if step.get("type") == "Split"]
    if regexes and regexes[0] in _SPLIT_REGEX_PRE:
        return _SPLIT_REGEX_PRE[regexes[0]]
    if not regexes and any(step.get("type") == "ByteLevel" and step.get("use_regex", True) for step in steps):
        return "smollm"
    logger.warning("Unrecognized pre-tokenizer; GGUF states %r, tokenization may differ", _DEFAULT_PRE[model_type])
    return _DEFAULT_PRE[model_type]


def _add_tensors(
    writer: gguf.GGUFWriter,
    state_dict: dict[str, torch.Tensor],
    config: Any,
    arch: gguf.MODEL_ARCH,
    weight_type: gguf.GGMLQuantizationType,
) -> None:
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    for hf_name, tensor in state_dict.items():
        # A tied head is the embedding again; llama.cpp reuses token_embd when output.weight is absent.
        if hf_name.endswith("rotary_emb.inv_freq") or (hf_name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"Cannot map tensor {hf_name!r} to a GGUF name for {config.model_type}")
        data = tensor.detach().to("cpu", torch.float32)
        # llama.cpp runs Llama's RoPE on pairs of adjacent dimensions, transformers on i and i+head_dim/2:
        # reorder the rows to match. (It runs Qwen2's in the NEOX style, which pairs them as transformers.)
        if arch == gguf.MODEL_ARCH.LLAMA and name.endswith("attn_q.weight"):
            data = _permute(data, heads, heads)
        elif arch == gguf.MODEL_ARCH.LLAMA and name.endswith("attn_k.weight"):
            data = _permute(data, heads, kv_heads)
        array = data.numpy()
        qtype = _tensor_type(name, array, weight_type)
        writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)


def _tensor_type(name: str, array: np.ndarray, weight_type: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """Norms and other 1-D tensors stay F32, as in llama.cpp; so do rows Q8_0 cannot split into blocks
    of 32, where llama.cpp would fall back to F16 (F32 loses nothing, and such tensors are rare)."""
    if array.ndim <= 1 or name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    block_size, _ = gguf.GGML_QUANT_SIZES[weight_type]
    if array.shape[-1] % block_size:
        logger.warning("%s has rows of %d, not a multiple of %d: kept in F32", name, array.shape[-1], block_size)
        return gguf.GGMLQuantizationType.F32
    return weight_type


def _permute(weights: torch.Tensor, n_head: int, n_head_kv: int) -> torch.Tensor:
    """`LlamaModel.permute` of convert_hf_to_gguf.py; transformers' `LlamaTensorProcessor` undoes it."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
