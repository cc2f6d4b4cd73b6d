"""Baselines for the rollout benchmark: bare vLLM (same engine settings as a rollout worker) and
HF `generate`, on the same model, prompts, batch and length.

    python benchmarks/bench_bare.py --model DIR [--smoke]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPEATS, TARGETS, median, prompts, save_piece


def hf_generate(path: str, batch: int, tokens: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device)
    model.generation_config.eos_token_id = None
    enc = tokenizer(prompts(batch), return_tensors="pt", padding=True).to(device)
    start = time.perf_counter()
    model.generate(
        **enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True, pad_token_id=tokenizer.pad_token_id
    )
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return batch * tokens / seconds


def save_adapter(path: str, out: str, rank: int) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    peft.save_pretrained(out)
    return out


def timed_generate(llm, prompts: list[str], sampling, request) -> float:
    """Completion tokens per second of one `generate` call."""
    start = time.perf_counter()
    outs = llm.generate(prompts, sampling, lora_request=request, use_tqdm=False)
    seconds = time.perf_counter() - start
    return round(sum(len(c.token_ids) for o in outs for c in o.outputs) / seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU check of the script")
    parser.add_argument("--skip-hf", action="store_true", help="skip the (slow) HF generate baseline")
    parser.add_argument(
        "--batches", default=None, help="rollout batch sizes, the last one also with log-probs (64,256; smoke: 16)"
    )
    parser.add_argument(
        "--multiprocessing",
        action="store_true",
        help="vLLM's engine core in a process of its own (vLLM's default; piece bare_mp)",
    )
    args = parser.parse_args()
    # In-process, like a rollout worker's engine, unless asked for vLLM's default.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if args.multiprocessing else "0"
    tokens, group = (8 if args.smoke else 256), 8
    batches = tuple(map(int, (args.batches or ("16" if args.smoke else "64,256")).split(",")))
    result: dict = {}
    if not args.smoke and not args.skip_hf:
        result["hf_generate_bs64_tok_s"] = round(hf_generate(args.model, 64, tokens), 1)
    rank = 16 if args.smoke else 64
    adapter = save_adapter(args.model, "/tmp/rlactors-bench-adapter", rank)
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    extra = {"enforce_eager": True, "kv_cache_memory_bytes": 256 * 2**20} if args.smoke else {}
    start = time.perf_counter()
    llm = LLM(
        model=args.model,
        enable_lora=True,
        max_lora_rank=rank,
        max_loras=2,
        max_model_len=1024,
        gpu_memory_utilization=0.5 if not args.smoke else 0.3,
        dtype="bfloat16",
        **extra,
    )
    result["vllm_startup_s"] = round(time.perf_counter() - start, 1)
    params = SamplingParams(n=group, max_tokens=tokens, min_tokens=tokens, ignore_eos=True, temperature=1.0)
    lora = LoRARequest("bench", 1, adapter)
    # What a rollout worker asks of vLLM on top: the log-prob of every sampled token (flat lists) and
    # no incremental detokenisation; splits vLLM's own cost of log-probs from rlactors' own.
    fields = getattr(SamplingParams, "__struct_fields__", ())
    same = {k: v for k, v in (("flat_logprobs", True), ("detokenize", False)) if k in fields}
    with_logprobs = SamplingParams(
        n=group, max_tokens=tokens, min_tokens=tokens, ignore_eos=True, temperature=1.0, logprobs=0, **same
    )
    runs = [(batch, "", params) for batch in batches] + [(batches[-1], "_logprobs", with_logprobs)]
    for batch, suffix, sampling in runs:
        for name, request in (("base", None), ("lora", lora)):
            # Untimed first pass of the same shape: vLLM JIT-compiles some kernels (the log-prob
            # top-k among them) on first use, and the adapter's one load from disk happens here.
            # Then the median of three timed passes (one pass varied by 30% between runs on a GPU).
            timed_generate(llm, prompts(batch // group), sampling, request)
            rates = [timed_generate(llm, prompts(batch // group), sampling, request) for _ in range(REPEATS)]
            result[f"bare_vllm_bs{batch}_{name}{suffix}_tok_s"] = median(rates)
    save_piece("bare_mp" if args.multiprocessing else "bare", result)


if __name__ == "__main__":
    main()
