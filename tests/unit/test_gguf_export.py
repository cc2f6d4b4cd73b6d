"""GGUF export round trips on CPU: write tiny Llama and Qwen2 models with `write_gguf`, load them back
with transformers' GGUF loader, and compare logits and token ids with the originals."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlactors.loader import gguf_export
from rlactors.loader.gguf_export import write_gguf
from rlactors.testing import make_tiny_model

pytestmark = pytest.mark.unit

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! 123 4567, ok?",
    "def f(x):\n    return x * 2\n",
]
TEXTS = [
    *PROMPTS,
    "  leading spaces,\ttabs\n\n\nand blank lines  ",
    "Ünïcödé — emoji 🤗 and 中文 text",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
]

# The random init's q/k give near-uniform attention, where RoPE and so the Q/K permutation barely
# matter (a wrong permutation moved logits by only ~0.03). Scaled up, attention is sharp: see below.
QK_SCALE = 8.0
F16_BOUND = 1e-2
# Measured max |logit difference| against the fp32 original, whose logits' std is ~0.23: f16 0.0023
# (llama) and 0.0012 (qwen2); q8_0 0.049 (llama) and 0.035 (qwen2), all of it Q8_0's rounding (the
# q8_0 model matches the original with Q8_0-rounded weights exactly). Writing q/k unpermuted moves
# logits by 1.29, swapping one layer's two norms by 0.64-0.84: 0.1 leaves 2x margin over the rounding
# and sits 6-13x below a wrong layout (the test below demands at least 5x).
Q8_BOUND = 0.1


@dataclass
class Original:
    arch: str
    model: Any
    tokenizer: Any
    folder: str
    logits: list[torch.Tensor] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def _logits(model: Any, tokenizer: Any) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(tokenizer(p, return_tensors="pt").input_ids).logits[0] for p in PROMPTS]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def original(request: pytest.FixtureRequest, smollm2: str, tmp_path_factory: pytest.TempPathFactory) -> Original:
    folder = str(tmp_path_factory.mktemp(f"gguf_{request.param}"))
    path = make_tiny_model(os.path.join(folder, "hf"), request.param, smollm2)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(QK_SCALE)
            elif param.ndim == 1:
                # norms start at ones and Qwen2's q/k/v biases at zeros: a swap of those would not show
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    tokenizer = AutoTokenizer.from_pretrained(path)
    result = Original(request.param, model, tokenizer, folder)
    result.logits = _logits(model, tokenizer)
    return result


def _export(original: Original, quantization: str) -> str:
    """The GGUF file's name in its own folder (a folder with a tokenizer.json would shadow the GGUF's)."""
    if quantization not in original.files:
        folder = os.path.join(original.folder, quantization)
        os.makedirs(folder, exist_ok=True)
        write_gguf(
            original.model.state_dict(), original.model.config, original.tokenizer, f"{folder}/m.gguf", quantization
        )
        original.files[quantization] = folder
    return original.files[quantization]


def _load(folder: str, config: Any = None) -> Any:
    """The GGUF file's model; with `config`, its weights only (reading the config again takes seconds)."""
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file="m.gguf", config=config).eval()


def _q8_rounded(model: Any) -> Any:
    """The model with every 2-D weight rounded through Q8_0 and back, as the q8_0 file stores it."""
    rounded = copy.deepcopy(model)
    q8 = gguf.GGMLQuantizationType.Q8_0
    with torch.no_grad():
        for param in rounded.parameters():
            if param.ndim == 2:
                blocks = gguf.quants.quantize(param.numpy(), q8)
                param.copy_(torch.from_numpy(gguf.quants.dequantize(blocks, q8)))
    return rounded


@pytest.mark.parametrize("quantization", ["f16", "q8_0"])
def test_logits_survive_the_round_trip(original: Original, quantization: str) -> None:
    loaded = _load(_export(original, quantization))
    assert loaded.config.model_type == original.arch
    assert loaded.config.tie_word_embeddings  # lm_head left out, as the original ties it
    assert loaded.config.num_key_value_heads == original.model.config.num_key_value_heads
    logits = _logits(loaded, original.tokenizer)
    diff = _max_diff(original.logits, logits)
    bound = F16_BOUND if quantization == "f16" else Q8_BOUND
    assert Q8_BOUND < 0.5 * min(float(x.std()) for x in original.logits)  # the bound is not vacuous
    assert diff < bound, f"{original.arch} {quantization}: max |logit diff| {diff:.4f} >= {bound}"
    if quantization == "q8_0":
        # Past the rounding, the file holds exactly the original's weights, in the right places.
        exact = _max_diff(_logits(_q8_rounded(original.model), original.tokenizer), logits)
        assert exact < 1e-4, f"{original.arch} q8_0 vs Q8_0-rounded original: {exact}"


def _wrong_file_diff(original: Original, name: str, state_dict: dict[str, torch.Tensor]) -> float:
    folder = os.path.join(original.folder, name)
    os.makedirs(folder)
    write_gguf(state_dict, original.model.config, original.tokenizer, f"{folder}/m.gguf", "f16")
    return _max_diff(original.logits, _logits(_load(folder, original.model.config), original.tokenizer))


def test_a_wrong_layout_would_break_the_bound(original: Original, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound means something: files with one layer's norms swapped, or (llama) q/k left unpermuted,
    land far outside it."""
    state_dict = dict(original.model.state_dict())
    first, second = "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"
    state_dict[first], state_dict[second] = state_dict[second], state_dict[first]
    diffs = {"swapped norms": _wrong_file_diff(original, "swapped", state_dict)}
    if original.arch == "llama":
        monkeypatch.setattr(gguf_export, "_permute", lambda weights, n_head, n_head_kv: weights)
        diffs["unpermuted q/k"] = _wrong_file_diff(original, "unpermuted", original.model.state_dict())
    assert all(diff > 5 * Q8_BOUND for diff in diffs.values()), diffs


def test_tokenizer_survives_the_round_trip(original: Original) -> None:
    folder = _export(original, "f16")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="m.gguf")
    for text in TEXTS:
        assert tokenizer(text).input_ids == original.tokenizer(text).input_ids, text
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        original.tokenizer.bos_token_id,
        original.tokenizer.eos_token_id,
        original.tokenizer.pad_token_id,
    )
    assert tokenizer.chat_template == original.tokenizer.chat_template
    messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]
    expected = original.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True) == expected


def test_file_states_types_and_vocabulary(original: Original) -> None:
    reader = gguf.GGUFReader(os.path.join(_export(original, "q8_0"), "m.gguf"))
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    q8, f32 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F32
    assert types["token_embd.weight"] == q8 and types["blk.0.attn_q.weight"] == q8
    assert types["output_norm.weight"] == f32 and types["blk.1.ffn_norm.weight"] == f32
    assert "output.weight" not in types
    assert (original.arch == "qwen2") == ("blk.0.attn_q.bias" in types)

    def field_value(key: str) -> Any:
        return reader.fields[key].contents()

    assert field_value("general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert field_value("tokenizer.ggml.model") == "gpt2"
    # transformers loads the qwen2 model's copy of SmolLM2's tokenizer as a Qwen2Tokenizer, which splits
    # text with Qwen2's regex; the llama one keeps SmolLM2's bare byte-level pre-tokenizer.
    assert field_value("tokenizer.ggml.pre") == {"llama": "smollm", "qwen2": "qwen2"}[original.arch]
    assert len(field_value("tokenizer.ggml.tokens")) == original.model.config.vocab_size
    assert field_value(f"{original.arch}.rope.dimension_count") == 64


def test_unknown_quantization_is_refused(tmp_path) -> None:
    config = SimpleNamespace(model_type="llama")
    with pytest.raises(ValueError, match=r"'q4_k_m'.*bf16.*f16.*f32.*q8_0"):
        write_gguf({}, config, None, str(tmp_path / "m.gguf"), "q4_k_m")


def test_unknown_model_type_is_refused(tmp_path) -> None:
    config = SimpleNamespace(model_type="mistral")
    with pytest.raises(ValueError, match=r"'mistral'.*llama.*qwen2"):
        write_gguf({}, config, None, str(tmp_path / "m.gguf"))
    assert not (tmp_path / "m.gguf").exists()
