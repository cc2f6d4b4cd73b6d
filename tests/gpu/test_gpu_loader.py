"""The loader on CUDA (vLLM >= 0.26): bf16 and bitsandbytes 4-bit, in-memory adapters in vLLM agree
with HF+PEFT. Skipped without a GPU; run on the lent GPU machine.

    RLACTORS_TOKENIZER_DIR=.bench/tok python -m pytest tests/gpu -s
"""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# bf16 on both sides: per-token log-probs agree to a few hundredths; a 4-bit learner against
# vLLM's own 4-bit (or bf16) base adds quantisation differences, hence the looser bound.
BF16_MEAN_TOL, QLORA_MEAN_TOL = 0.05, 0.25


def _check_adapter_agreement(model_dir, load_in_4bit, tolerance):
    from rlactors import FastLanguageModel
    from rlactors.engine import vllm_engine

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_dir,
        max_seq_length=512,
        load_in_4bit=load_in_4bit,
        fast_inference=True,
        gpu_memory_utilization=0.3,
        max_lora_rank=64,
        enforce_eager=True,
    )
    ids = tokenizer("The quick brown fox jumps over the lazy dog, again and again.").input_ids
    n = len(ids) // 2
    base = torch.tensor(vllm_engine.prompt_logprobs(model.vllm_engine, ids, n))
    model = FastLanguageModel.get_peft_model(model, r=64, lora_alpha=64, target_modules=TARGETS)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    request = model.load_lora()
    ours = torch.tensor(vllm_engine.prompt_logprobs(model.vllm_engine, ids, n, request))
    with torch.no_grad():
        logits = model(torch.tensor([ids], device="cuda")).logits[0, :-1].float()
    hf = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:], device="cuda")[:, None])[:, 0][-n:].cpu()
    diff = (ours - hf).abs()
    print(
        f"load_in_4bit={load_in_4bit}: |logp_vllm - logp_hf| mean {diff.mean():.4f} max {diff.max():.4f}; "
        f"adapter moved vLLM by {(ours - base).abs().mean():.4f}"
    )
    assert diff.mean() < tolerance
    assert (ours - base).abs().mean() > 3 * diff.mean(), "vLLM ignored the adapter"
    return model


def test_bf16_in_memory_adapter_matches_hf(model_dir):
    model = _check_adapter_agreement(model_dir, load_in_4bit=False, tolerance=BF16_MEAN_TOL)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_4bit_learner_with_in_memory_adapter(model_dir):
    import bitsandbytes as bnb

    model = _check_adapter_agreement(model_dir, load_in_4bit=True, tolerance=QLORA_MEAN_TOL)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_merged_4bit_forced_folder_reloads_with_the_adapter_merged(model_dir, tmp_path):
    """Unsloth's `save_method="merged_4bit_forced"`: a bitsandbytes 4-bit folder that transformers
    loads as 4-bit, whose log-probs are the trained model's (base + adapter), not the base's."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    from rlactors import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_dir, max_seq_length=512, load_in_4bit=True, fast_inference=False
    )
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, target_modules=TARGETS)
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog, again and again.").input_ids])
    ids = ids.to("cuda")

    def logprobs(m):
        with torch.no_grad():
            return m(ids).logits[0, :-1].float().log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]

    with model.disable_adapter():
        base = logprobs(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    trained = logprobs(model)
    folder = model.save_pretrained_merged(str(tmp_path / "merged4"), tokenizer, save_method="merged_4bit_forced")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, device_map="cuda")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in reloaded.modules())
    assert reloaded.config.quantization_config.load_in_4bit
    ours = logprobs(reloaded)
    to_trained, to_base = (ours - trained).abs().mean(), (ours - base).abs().mean()
    print(f"merged_4bit_forced: |logp - trained| {to_trained:.4f}, |logp - base| {to_base:.4f}")
    # quantizing the merged weights again moves them as much as a 4-bit base does (0.23 on an H200
    # for this random-weight model); the base without the adapter is further still
    assert to_trained < QLORA_MEAN_TOL
    assert to_base > 1.5 * to_trained, "the adapter was not merged"


def test_child_processes_build_the_lora_kernels_into_an_empty_triton_cache(model_dir, tmp_path, monkeypatch):
    """A machine's first start: `KernelPrebuild`'s children each finish cleanly and leave builds of
    vLLM's LoRA kernels (shrink and expand, at 1, 16, 17, 256 and 257 tokens) in Triton's cache.
    (`benchmarks/bench_kernel_prebuild.py` measures that the engine then builds none of them itself.)"""
    from rlactors.engine.worker_env import KernelPrebuild, lora_kernel_builds

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    assert lora_kernel_builds() == 0
    prebuild = KernelPrebuild.start(model_dir, 64)
    assert prebuild.wait() == len(prebuild.children) == 8
    assert lora_kernel_builds() >= 10


UNUSED_FEATURE_KERNELS = {  # what vLLM's own warm-up builds for penalties, min-p, top-k/top-p, logit bias, bad words,
    # prompt log-probs and a grammar bitmask (the fifteenth lease's first starts built each of them)
    "_penalties_kernel",
    "_bincount_kernel",
    "_min_p_kernel",
    "_topk_topp_kernel",
    "_bias_kernel",
    "_bad_words_kernel",
    "_prompt_logprobs_token_ids_kernel",
    "_apply_grammar_bitmask_kernel",
}
FIRST_START = """
import glob, json, os, sys
from rlactors.engine import vllm_engine
from rlactors.loader.fast_language_model import load_engine

def built():
    paths = glob.glob(os.path.join(os.environ["TRITON_CACHE_DIR"], "*", "*.cubin"))
    return sorted({os.path.basename(p)[: -len(".cubin")] for p in paths})

fields = {"temperature": 1.0, "top_p": 1.0}
llm = load_engine(sys.argv[1], 512, "bfloat16", 0.3, 64, max_batch=16, sampler_warmup=fields, enforce_eager=True)
started = built()
samples = vllm_engine.sample(llm, [[1, 2, 3, 4]] * 2, n=8, max_tokens=8, lora_request=None, **fields)
print("KERNELS", json.dumps({"started": started, "sampled": built(), "samples": len(samples)}))
"""


def test_the_engine_warms_its_sampler_up_with_the_runs_settings_only(model_dir, tmp_path):
    """A machine's first start (an empty Triton cache, in a process of its own): with the run's
    sampling settings (`vllm_sampler_warmup: run`) the engine builds none of the kernels of the
    features the run does not use, neither as it starts nor as it samples."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_START, model_dir], env=env, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-3000:]
    kernels = json.loads(done.stdout.split("KERNELS", 1)[1])
    print("kernels built as the engine started:", kernels["started"], "then as it sampled:", kernels["sampled"])
    assert kernels["samples"] == 16
    assert "_gumbel_sample_kernel" in kernels["started"]  # the warm-up ran, and sampled as the run does
    assert not UNUSED_FEATURE_KERNELS & set(kernels["sampled"])
