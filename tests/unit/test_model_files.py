"""The embedded model folder that `rlactors prepare-model smollm2` builds."""

import json
import os

import pytest

pytestmark = pytest.mark.unit


def test_smollm2_folder_is_a_plain_hf_model(smollm2):
    with open(os.path.join(smollm2, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config  # dense weights, not GGUF
    assert os.path.isfile(os.path.join(smollm2, "model.safetensors"))
    from rlactors.loader.fast_language_model import load_tokenizer

    tokenizer = load_tokenizer(smollm2)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


def test_doctor_reports_every_component():
    from rlactors.doctor import run_checks

    names = {c.name for c in run_checks()}
    assert {"torch", "vllm", "4-bit", "ray", "transformers", "peft", "embedded model"} <= names


def test_llama_rewritten_as_qwen2_computes_the_same(smollm2, tmp_path):
    """The GPU tool-loop test's model: SmolLM2 in Qwen2's class, zero q/k/v biases, equal logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlactors.testing.models import llama_as_qwen2

    path = llama_as_qwen2(smollm2, str(tmp_path / "qwen2"), chat_template="{{ 'x' }}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("What is 12*34?", return_tensors="pt").input_ids
    qwen = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    llama = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    assert type(qwen).__name__ == "Qwen2ForCausalLM" and tokenizer.chat_template == "{{ 'x' }}"
    with torch.no_grad():
        assert torch.equal(qwen(ids).logits, llama(ids).logits)
