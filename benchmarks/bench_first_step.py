"""Time to first step and step time of the README's main example, as a user runs it
(`python -m rlactors train examples/arithmetic_grpo.yaml`), in several engine settings, one run
each, in the order given (the first run on a fresh machine is the cold one).

    python benchmarks/bench_first_step.py --model /tmp/smollm2 [--steps 10] [--variants default,default,eager]
    python benchmarks/bench_first_step.py --shape llama-1b --tokenizer /tmp/smollm2   # the 1B benchmark's step
    python benchmarks/bench_first_step.py --model /tmp/smollm2 --variants every_8,default --cold-triton
        # each run with its own empty Triton cache, as on a fresh machine (vLLM's other caches stay)

`--shape`: random weights in that shape (`common.SHAPES`, SmolLM2's tokenizer) and the GRPO step of
`bench_rlactors.py` (16 prompts x 8 x 256 tokens, LoRA r=64 on all seven projections) on the
example's prompts, instead of the embedded model and the example's own sizes.

For each run: seconds from launch to the first metrics row (time to first step), the console's
phase lines (Ray, learner, vLLM, the first step), the median step time of steps 3 and later, the
last reward, and every compiler process seen while it ran (`nvcc`, `cicc`, `ptxas`, `cc1plus`,
... sampled each second: what builds kernels on first use, and for which source).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_rlactors import config_for
from common import SHAPES, gpu_name, make_model, save_piece, versions

from rlactors.engine.spec import graph_sizes

KV = {"kv_cache_memory_bytes": 2**30}
VARIANTS: dict[str, list[str]] = {
    # rlactors' defaults: full CUDA graphs (no torch.compile) for batch sizes up to the step's 64 sequences
    "default": [],
    "eager": [f"engine_kwargs={json.dumps({**KV, 'enforce_eager': True})}"],
    # vLLM's own capture sizes (up to 512): what the defaults were before
    "vllm_sizes": [f"engine_kwargs={json.dumps({**KV, 'compilation_config': {}})}"],
    # no torch.compile: full CUDA graphs of decode batches only
    "no_compile": [
        "engine_kwargs="
        + json.dumps(
            {
                **KV,
                "compilation_config": {
                    "mode": 0,
                    "cudagraph_mode": "FULL_DECODE_ONLY",
                    "cudagraph_capture_sizes": graph_sizes(64),
                },
            }
        )
    ],
    "4bit": ["load_in_4bit=true"],  # vLLM on the bitsandbytes 4-bit base, as the learner
    "4bit_bf16_rollout": ["load_in_4bit=true", f"engine_kwargs={json.dumps({**KV, 'quantization': None})}"],
    # the learner's decoder layers compiled (the update's kernel launches fused)
    "compile": ["torch_compile=true"],
    # and each compiled layer replayed as a CUDA graph (torch.compile's reduce-overhead mode): the example's
    # update is bound by the host's kernel launches (GPU busy 29%, fourth lease)
    "compile_graphs": ["torch_compile=true", "torch_compile_mode=reduce-overhead", "pad_to_multiple_of=16"],
    # generation of step N+1 beside the update of step N (one adapter version behind)
    "async": ["max_staleness=1"],
    "compile_async": ["torch_compile=true", "max_staleness=1"],
    # torch's multi-tensor AdamW, the default before `adamw_torch_fused` (transformers' default)
    "adamw_torch": ["optim=adamw_torch"],
    # the learner computes each prompt once for its samples (the default on CPU learners only)
    "shared_prompt": ["share_prompt_forward=true"],
    # vLLM in the driver process, imported while Ray starts and started beside the learner actor
    "driver_vllm": ["num_rollout_workers=0"],
    # on a first start, vLLM builds its LoRA kernels one after another (no child processes building them)
    "no_prebuild": ["vllm_prebuild_lora_kernels=false"],
    "driver_no_prebuild": ["num_rollout_workers=0", "vllm_prebuild_lora_kernels=false"],
    # vLLM's own sampler warm-up (every sampling feature) instead of the run's settings: on a first start
    # Triton builds the kernels of penalties, min-p, top-k/top-p, logit bias, bad words, prompt log-probs
    "sampler_warmup_all": ["vllm_sampler_warmup=all"],
}
# rlactors' defaults in another environment: Ray's own settings (`RAY_<name>`) for the local cluster it
# starts, or vLLM's (read in the rollout worker, which inherits them)
VARIANT_ENV: dict[str, dict[str, str]] = {
    # vLLM's V1 model runner: the V2 runner (vLLM 0.26's default for this model) builds 25 Triton kernels
    # of its own (input preparation, sampler) on a machine's first start, most of a fresh engine's time
    "runner_v1": {"VLLM_USE_V2_MODEL_RUNNER": "0"},
    # no idle workers started for the first driver (one per CPU, each importing Ray beside the actors)
    "no_prestart": {"RAY_prestart_worker_first_driver": "0"},
    # the idle workers import torch before the actors land on them
    "preload_torch": {"RAY_preload_python_modules": "torch"},
    # one idle worker per CPU started with the raylet (during `ray.init()`), torch imported in each
    "prestart_torch": {"RAY_enable_worker_prestart": "1", "RAY_preload_python_modules": "torch"},
}


def every_8(batch: int) -> list[int]:
    """vLLM's pattern of CUDA graph sizes (1, 2, 4, then every 8) up to `batch`: rlactors' until 2026-12-07."""
    return [1, 2, 4, *range(8, -(-batch // 8) * 8 + 1, 8)]


# vLLM's compilation settings instead of rlactors' defaults (full graphs without torch.compile, each
# size captured once), each with its graph sizes up to the step's batch, and the run's KV cache (the
# example's 1 GiB, or vLLM's share for --shape)
ENGINE_VARIANTS: dict[str, tuple[dict, Callable[[int], list[int]]]] = {
    # vLLM's torch.compile and piecewise graphs (full ones for decode batches): the default until 2026-12-01
    "compiled": ({}, graph_sizes),
    # rlactors' default, but each size captured with and without LoRA (vLLM's default)
    "lora_specialized": ({"mode": 0, "cudagraph_mode": "FULL"}, graph_sizes),
    # rlactors' default at the sizes before 2026-12-07: sizes 1, 2, 4, 8, 24, ... are more builds of each
    # LoRA kernel on a fresh machine (Triton specializes an integer argument on 1 and on multiples of 16)
    "every_8": ({"mode": 0, "cudagraph_mode": "FULL", "cudagraph_specialize_lora": False}, every_8),
}
ENGINE_TIMING = re.compile(r"took [0-9.]+ ?s|finished in [0-9.]+ ?s|[0-9.]+ ?s in total|seconds", re.IGNORECASE)
COMPILERS = re.compile(r"\b(nvcc|cicc|ptxas|cudafe\+\+|cc1plus|cc1|fatbinary|nvlink|ninja)\b")


def watch_compilers(seen: dict[str, float], stop: threading.Event, started: float) -> None:
    """Every second, the command lines of compiler processes (first time each was seen)."""
    while not stop.wait(1.0):
        out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            words = line.split()
            if words and COMPILERS.search(os.path.basename(words[0])):
                sources = [w for w in words if re.search(r"\.(cu|cpp|c|ptx|cubin)$", w)]
                key = f"{os.path.basename(words[0])} {' '.join(sources)[-160:]}"
                seen.setdefault(key, round(time.perf_counter() - started, 1))


def engine_timings(log_path: str) -> list[str]:
    if not os.path.exists(log_path):
        return []
    with open(log_path, errors="replace") as f:
        return [line.strip()[-200:] for line in f if ENGINE_TIMING.search(line)]


def triton_kernels(cache_dir: str | None, launched: float) -> dict:
    """What a run's own Triton cache holds (with --cold-triton): the count of kernels by name, for
    vLLM's LoRA kernels each build's signature (which integer arguments Triton specialized), and
    when each build was written, in seconds after `launched` (a `time.time()`): the gaps between
    one process's builds are their build times."""
    if not cache_dir or not os.path.isdir(cache_dir):
        return {}
    counts: dict[str, int] = {}
    lora: list[str] = []
    written: list[tuple[float, str]] = []
    for ttir in sorted(glob.glob(os.path.join(cache_dir, "*", "*.ttir"))):
        name = os.path.basename(ttir)[: -len(".ttir")]
        counts[name] = counts.get(name, 0) + 1
        cubin = ttir[: -len(".ttir")] + ".cubin"
        written.append((os.path.getmtime(cubin if os.path.exists(cubin) else ttir) - launched, name))
        if name.startswith("_lora_"):
            with open(ttir, errors="replace") as f:
                head = next((line for line in f if "tt.func" in line), "")
            lora.append(f"{name}: {head.count('tt.divisibility')} arguments specialized as multiples of 16")
    timeline = [f"{t:6.1f}s {name}" for t, name in sorted(written)]
    return {"by_name": counts, "total": sum(counts.values()), "lora_builds": lora, "timeline": timeline}


def shape_step() -> list[str]:
    """The GRPO step of `bench_rlactors.py` (its config's fields as `--set` values), at vLLM's 0.2 share."""
    config = config_for("", smoke=False, steps=1, gmu=0.2, checkpointing=False, micro=32)
    run = {"model_name", "max_steps", "output_dir", "save_steps", "progress_bar", "report_to"}  # this script's
    return [f"{k}={json.dumps(v)}" for k, v in config.model_dump(exclude_unset=True, exclude=run).items()]


def engine_sets(variant: tuple[dict, Callable[[int], list[int]]], args: argparse.Namespace) -> list[str]:
    """The `--set` of an ENGINE_VARIANTS entry: its compilation settings, graphs up to the step's batch."""
    compilation, sizes = variant
    batch = 128 if args.shape else 64  # the 1B step's 16 x 8, the example's 8 x 8
    kwargs = ({} if args.shape else dict(KV)) | {
        "compilation_config": {**compilation, "cudagraph_capture_sizes": sizes(batch)}
    }
    return [f"engine_kwargs={json.dumps(kwargs)}"]


def run_one(name: str, sets: list[str], args: argparse.Namespace, index: int) -> dict:
    out_dir = os.path.join(args.work, f"{index}-{name}")
    command = [sys.executable, "-m", "rlactors", "train", args.config]
    for value in [f"model_name={args.model}", f"max_steps={args.steps}", f"output_dir={out_dir}", "save_steps=0"]:
        command += ["--set", value]
    for value in shape_step() if args.shape else []:
        command += ["--set", value]
    for value in sets:
        command += ["--set", value]
    started, launched = time.perf_counter(), time.time()
    seen: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_compilers, args=(seen, stop, started), daemon=True)
    watcher.start()
    lines: list[tuple[float, str]] = []
    env = {**os.environ, **VARIANT_ENV.get(name, {})}
    if args.cold_triton:  # an empty Triton cache: every GPU kernel Triton builds is built again, as on a fresh machine
        env["TRITON_CACHE_DIR"] = os.path.join(out_dir, "triton-cache")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    def read() -> None:
        for line in proc.stdout:
            lines.append((round(time.perf_counter() - started, 1), line.rstrip()))
            print(f"  {lines[-1][0]:>6.1f}s {lines[-1][1][:200]}", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    rc = proc.wait()
    reader.join(5)  # Ray's daemons inherit the pipe and may hold it open after the run
    stop.set()
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    rows = [json.loads(x) for x in open(metrics_path)] if os.path.exists(metrics_path) else []
    first = next((t for t, line in lines if "first step done" in line), None)
    steps = [r["step_time_s"] for r in rows[2:]]
    result = {
        "variant": name,
        "sets": sets,
        "rc": rc,
        "first_step_s": first,
        "total_s": round(time.perf_counter() - started, 1),
        # the first step with the adapter: on a fresh machine it builds the LoRA kernels the engine's start did not
        "second_step_s": round(rows[1]["step_time_s"], 2) if len(rows) > 1 else None,
        "step_median_s": round(statistics.median(steps), 3) if steps else None,
        "generate_median_s": round(statistics.median(r["time/generate_s"] for r in rows[2:]), 3) if steps else None,
        "rewards": [round(r["reward"], 2) for r in rows],
        "phases": [
            f"{t:>6.1f}s {line}"
            for t, line in lines
            if re.search(r"ready in|start-up by worker|first step done|\.\.\.$", line)
        ],
        # vLLM's own timings of its start (weights, torch.compile, CUDA graphs, the KV cache), from
        # the rollout worker's log
        "engine_timings": engine_timings(os.path.join(out_dir, "logs", "rollout-0.log")),
        # where a step's time goes, the median of steps 3 and later
        "step_parts_median_s": {
            key: round(statistics.median(r[key] for r in rows[2:]), 3)
            for key in (sorted(k for k in rows[0] if k.startswith("time/")) if rows else [])
        }
        if steps
        else {},
        "compilers": seen,
        "triton_kernels": triton_kernels(env.get("TRITON_CACHE_DIR"), launched),
    }
    if rc != 0:
        result["tail"] = [line for _, line in lines[-30:]]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/smollm2")
    parser.add_argument("--config", default="examples/arithmetic_grpo.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--variants", default="default,default,eager,vllm_sizes,no_compile,4bit,4bit_bf16_rollout")
    parser.add_argument("--work", default="/tmp/rlactors-first-step")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="random weights in this shape, the 1B step's sizes")
    parser.add_argument("--tokenizer", default="models/smollm2", help="with --shape: the tokenizer the model gets")
    parser.add_argument(
        "--cold-triton", action="store_true", help="each run with its own empty Triton cache (a fresh machine's)"
    )
    args = parser.parse_args()
    known = VARIANTS | ENGINE_VARIANTS | VARIANT_ENV
    unknown = [name for name in args.variants.split(",") if name not in known]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; known: {sorted(known)}")
    if args.shape:
        args.model = make_model(os.path.join(args.work, args.shape), args.shape, args.tokenizer)
    results = []
    for index, name in enumerate(args.variants.split(",")):
        sets = engine_sets(ENGINE_VARIANTS[name], args) if name in ENGINE_VARIANTS else VARIANTS.get(name, [])
        result = run_one(name, sets, args, index)
        results.append(result)
        print(json.dumps(result, indent=1), flush=True)
    print(
        f"\n{'variant':<20} {'first step s':>12} {'step 2 s':>8} {'step s':>8} {'generate s':>10} {'LoRA builds':>11}"
        "  rewards"
    )
    for r in results:
        builds = len(r["triton_kernels"].get("lora_builds", [])) if r["triton_kernels"] else "-"
        print(
            f"{r['variant']:<20} {r['first_step_s'] or float('nan'):>12} {r['second_step_s'] or float('nan'):>8} "
            f"{r['step_median_s'] or float('nan'):>8} "
            f"{r['generate_median_s'] or float('nan'):>10} {builds:>11}  {r['rewards']}"
        )
    save_piece("first_step", {"device": gpu_name(), "versions": versions(), "shape": args.shape, "runs": results})


if __name__ == "__main__":
    main()
