"""A fresh machine's first start: can vLLM's LoRA kernels be built in parallel processes while the
engine starts, instead of one after another inside it? (CUDA only.)

    python benchmarks/bench_kernel_prebuild.py --model /tmp/smollm2 [--modes none,prebuild,none,prebuild]

Each mode runs in its own process with its own empty Triton cache (as on a fresh machine):
- `none`: the engine as a rollout worker starts it (graphs up to 64 sequences), then two LoRA
  generations of the example's size (8 prompts x 8 x 32 tokens);
- `prebuild`: the same, with `--processes` spawned processes first calling vLLM's `lora_shrink` and
  `lora_expand` on zero tensors of the model's LoRA shapes (q/k/v, o, gate/up, down at rank
  `--max-lora-rank`) for token counts `--tokens` (Triton specializes an integer argument on 1, on
  multiples of 16 and on neither; vLLM's default kernel configs change at 128 tokens).
Printed per mode: the engine's start, the first and second generation, and the LoRA kernel builds:
all of them, and those the generations still built (`built_by_generations`; with `prebuild`, 0
and as few builds in all as `none` mean the processes built what vLLM needs, and only that).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def lora_shapes(model_dir: str) -> list[tuple[int, tuple[int, ...]]]:
    """(input size, output slices) of each LoRA layer kind vLLM makes for a Llama-like model:
    q/k/v merged (three slices), o, gate/up merged (two), down."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    hidden, inter, heads = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or hidden // heads
    q, kv = heads * head_dim, cfg.get("num_key_value_heads", heads) * head_dim
    return [(hidden, (q, kv, kv)), (q, (hidden,)), (hidden, (inter, inter)), (inter, (hidden,))]


def build(work: list[tuple[int, tuple[int, ...], int]], rank: int, max_loras: int) -> tuple[float, float]:
    """In a spawned process: each (input size, output slices, tokens) through vLLM's shrink and
    expand ops as `PunicaWrapperGPU.add_lora_linear` calls them (bf16 inputs and weights, a float32
    buffer between). Returns (seconds to import, seconds to build)."""
    start = time.perf_counter()
    import torch
    from vllm.lora.ops.triton_ops import LoRAKernelMeta, lora_expand, lora_shrink

    imported = time.perf_counter()
    device, dtype = torch.device("cuda"), torch.bfloat16
    keep = []  # vLLM caches the weights' pointers and strides by address: no address may be reused
    for in_size, slices, tokens in work:
        a = tuple(torch.zeros(max_loras, 1, rank, in_size, dtype=dtype, device=device) for _ in slices)
        b = tuple(torch.zeros(max_loras, 1, out, rank, dtype=dtype, device=device) for out in slices)
        meta = LoRAKernelMeta.make(max_loras, tokens, device)
        meta.prepare_tensors(torch.zeros(tokens, dtype=torch.int32, device=device))  # every token on LoRA 0
        args = meta.meta_args(tokens, False)
        x = torch.zeros(tokens, in_size, dtype=dtype, device=device)
        y = torch.zeros(tokens, sum(slices), dtype=dtype, device=device)
        buffer = torch.empty(len(slices), tokens, rank, dtype=torch.float32, device=device)
        lora_shrink(x, a, buffer, *args, 1.0)
        lora_expand(buffer, b, y, *args, offset_start=0, add_inputs=True)
        keep += [a, b, meta, x, y, buffer]
    torch.cuda.synchronize()
    return imported - start, time.perf_counter() - imported


def one_mode(args: argparse.Namespace) -> dict:
    from bench_bare import save_adapter
    from common import prompts

    cache = os.environ["TRITON_CACHE_DIR"]
    start = time.perf_counter()
    pool = result = None
    if args.mode == "prebuild":
        work = [(i, s, t) for i, s in lora_shapes(args.model) for t in map(int, args.tokens.split(","))]
        groups = [work[k :: args.processes] for k in range(args.processes)]
        pool = multiprocessing.get_context("spawn").Pool(args.processes)
        result = pool.starmap_async(build, [(g, args.max_lora_rank, 2) for g in groups if g])
    from rlactors.engine.spec import EngineSpec
    from rlactors.engine.vllm_engine import create_engine, folder_request, sample
    from rlactors.engine.worker_env import lora_kernel_files

    llm = create_engine(EngineSpec(args.model, 512, 0.3, args.max_lora_rank, max_batch=64), kv_cache_memory_bytes=2**30)
    out: dict = {"mode": args.mode, "engine_s": round(time.perf_counter() - start, 1)}
    if result is not None:
        times = result.get()
        pool.close()
        out["prebuild_done_s"] = round(time.perf_counter() - start, 1)
        out["prebuild_import_s"] = round(max(t[0] for t in times), 1)
        out["prebuild_build_s"] = round(max(t[1] for t in times), 1)
    ready = set(lora_kernel_files(cache))
    out["builds_before_generation"] = len(ready)
    request = folder_request("bench", 1, save_adapter(args.model, tempfile.mkdtemp(), args.max_lora_rank))
    tokenizer = llm.get_tokenizer()
    ids = [tokenizer(p).input_ids for p in prompts(8)]
    for name in ("first_generation_s", "second_generation_s"):
        t = time.perf_counter()
        sample(llm, ids, n=8, max_tokens=32, temperature=1.0, top_p=1.0, lora_request=request)
        out[name] = round(time.perf_counter() - t, 2)
    out["to_second_generation_s"] = round(time.perf_counter() - start, 1)
    final = set(lora_kernel_files(cache))
    out["builds"] = len(final)
    out["built_by_generations"] = len(final - ready)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/smollm2")
    parser.add_argument("--modes", default="none,prebuild,none,prebuild")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # one mode, in this process
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--tokens", default="1,16,17,256,257", help="token counts the kernels are built for")
    parser.add_argument("--max-lora-rank", type=int, default=64)
    args = parser.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(one_mode(args)), flush=True)
        return
    import torch

    if not torch.cuda.is_available():
        parser.error("needs CUDA: Triton builds vLLM's LoRA kernels only on a GPU")
    rows = []
    for mode in args.modes.split(","):
        env = {**os.environ, "TRITON_CACHE_DIR": tempfile.mkdtemp(prefix=f"triton-{mode}-")}
        command = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        rows.append(
            json.loads(lines[-1][7:]) if lines else {"mode": mode, "rc": done.returncode, "tail": done.stderr[-1500:]}
        )
        print(json.dumps(rows[-1]), flush=True)
    from common import gpu_name, save_piece, versions

    save_piece("kernel_prebuild", {"device": gpu_name(), "versions": versions(), "runs": rows})


if __name__ == "__main__":
    main()
