"""GPU tests' model: random bf16 weights in a small Llama shape with a real tokenizer
(RLACTORS_TOKENIZER_DIR, default models/smollm2)."""

import os
import time

import pytest
import torch


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = str(tmp_path_factory.mktemp("gpu") / "llama")
    tokenizer = AutoTokenizer.from_pretrained(os.environ.get("RLACTORS_TOKENIZER_DIR", "models/smollm2"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def free_memory():
    """(free, total) bytes of the GPU once its free memory has stopped rising: an earlier test's Ray
    actors give theirs back when their processes exit, seconds after that test returned."""
    free, total = torch.cuda.mem_get_info()
    steady, deadline = 0, time.monotonic() + 90
    while steady < 3 and time.monotonic() < deadline:
        time.sleep(1)
        now = torch.cuda.mem_get_info()[0]
        steady = steady + 1 if now - free < 2**28 else 0
        free = max(free, now)
    return free, total
