"""rlactors on one GPU, colocated: rollout throughput through a Ray rollout actor, adapter sync
(object store from memory vs a PEFT folder on disk), and the GRPO step with its peak memory.

    python benchmarks/bench_rlactors.py --model DIR [--smoke]

The GRPO workload matches the TRL and Unsloth baselines: 16 prompts x 8 generations x 256
tokens (ignore_eos), LoRA r=64 on all seven projections, gpu_memory_utilization 0.5.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPEATS, TARGETS, PeakMemory, median, percentile, prompts, save_piece


def length_reward(prompts, completions, **_):
    return [-abs(100 - len(c)) / 100 for c in completions]


def config_for(
    model: str,
    smoke: bool,
    steps: int,
    gmu: float,
    checkpointing: bool | str,
    micro: int,
    sleep: bool = False,
    compile_learner: bool = False,
    max_staleness: int = 0,
) -> object:
    from rlactors import GRPOConfig

    tokens = 8 if smoke else 256
    return GRPOConfig(
        model_name=model,
        max_seq_length=1024,
        max_prompt_length=64,
        max_completion_length=tokens,
        gpu_memory_utilization=0.3 if smoke else gmu,
        max_lora_rank=16 if smoke else 64,
        lora_r=16 if smoke else 64,
        lora_alpha=16 if smoke else 64,
        lora_target_modules=TARGETS,
        num_generations=8,
        prompts_per_step=2 if smoke else 16,
        learning_rate=1e-5,
        beta=0.0,
        max_steps=steps,
        save_steps=0,
        output_dir="/tmp/rlactors-bench-run",
        progress_bar=False,
        report_to=["jsonl"],
        micro_batch_size=micro,
        gradient_checkpointing=False if smoke else checkpointing,
        generation_kwargs={"min_tokens": tokens, "ignore_eos": True},
        max_logprob_mismatch=5.0,
        engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": 256 * 2**20} if smoke else {},
        vllm_enable_sleep_mode=sleep,
        torch_compile=compile_learner,
        max_staleness=max_staleness,
    )


def rollout_throughput(trainer, batches: list[int], tag: str, out: dict) -> None:
    tokenizer = trainer.tokenizer
    group = trainer.config.num_generations
    for batch in batches:
        ids = [tokenizer(p).input_ids for p in prompts(batch // group)]
        trainer.rollouts.generate(ids, trainer.version)  # untimed pass of the same shape, as bench_bare
        rates, shares = [], []
        for _ in range(REPEATS):
            start = time.perf_counter()
            result = trainer.rollouts.generate(ids, trainer.version)
            seconds = time.perf_counter() - start
            rates.append(float(result.completion_mask.sum()) / seconds)
            shares.append(result.vllm_seconds / seconds)
        out[f"rlactors_rollout_bs{batch}_{tag}_tok_s"] = round(median(rates), 1)
        # The share of the call spent in the worker's vLLM sampling; the rest is packing and Ray.
        out[f"rlactors_rollout_bs{batch}_{tag}_in_vllm_share"] = round(median(shares), 3)


def adapter_sync(trainer, rounds: int, out: dict) -> None:
    """Learner has new weights -> every rollout worker generates with them, by path, split into
    export (until the adapter is in the store / shared), load (every worker installed it) and a
    one-token probe generation. Paths: CUDA IPC (colocated, `adapter_sync: auto`), the object
    store's bytes, and a PEFT folder on disk."""
    import ray

    probe = trainer.tokenizer(prompts(1)[0]).input_ids
    paths = {"device": True, "object_store": False} if trainer.on_device else {"object_store": False}
    for tag, on_device in paths.items():
        phases = {"export": [], "load": [], "probe": [], "total": []}
        for _ in range(rounds):
            start = time.perf_counter()
            ref = trainer.learners.export_adapter(on_device=on_device)
            if isinstance(ref, ray.ObjectRef):
                ray.wait([ref], fetch_local=False)
            exported = time.perf_counter()
            trainer.rollouts.load_adapter(ref)
            loaded = time.perf_counter()
            trainer.rollouts.prompt_logprobs(probe, 1)  # every worker generates with it
            done = time.perf_counter()
            for key, value in zip(phases, (exported - start, loaded - exported, done - loaded, done - start)):
                phases[key].append(value)
        steady = {key: values[2:] or values for key, values in phases.items()}
        out[f"sync_{tag}_ms_all"] = [round(x * 1000, 1) for x in phases["total"]]
        out[f"sync_{tag}_p50_ms"] = round(median(steady["total"]) * 1000, 1)
        out[f"sync_{tag}_p95_ms"] = round(percentile(steady["total"], 0.95) * 1000, 1)
        out[f"sync_{tag}_phases_p50_ms"] = {k: round(median(v) * 1000, 1) for k, v in steady.items() if k != "total"}
        # what a training step's `time/sync` covers: export and load, no probe generation
        in_step = [e + lo for e, lo in zip(steady["export"], steady["load"])]
        out[f"sync_{tag}_in_step_p50_ms"] = round(median(in_step) * 1000, 1)
    adapter = ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref
    disk = []
    for i in range(max(3, rounds // 2)):
        start = time.perf_counter()
        folder = trainer.learners.save_adapter(f"/tmp/rlactors-bench-disk-{i}")
        trainer.rollouts.load_adapter_folder(folder, trainer.version)
        trainer.rollouts.prompt_logprobs(probe, 1)
        disk.append(time.perf_counter() - start)
    best = "device" if trainer.on_device else "object_store"
    out.update(
        {
            "adapter_mb": round(adapter.nbytes() / 2**20, 1),
            "adapter_sync_path": best,
            "adapter_sync_p50_ms": out[f"sync_{best}_p50_ms"],
            "adapter_sync_p95_ms": out[f"sync_{best}_p95_ms"],
            "adapter_sync_in_step_p50_ms": out[f"sync_{best}_in_step_p50_ms"],
            "disk_sync_ms_all": [round(x * 1000, 1) for x in disk],
            "disk_sync_p50_ms": round(median(disk[1:] or disk) * 1000, 1),
        }
    )
    out["adapter_sync_speedup_vs_disk"] = round(out["disk_sync_p50_ms"] / out["adapter_sync_p50_ms"], 2)
    trainer.rollouts.load_adapter(trainer.learners.export_adapter(on_device=trainer.on_device))  # as trained


def grpo_steps(trainer, steps: int, out: dict) -> None:
    with PeakMemory() as peak:
        for step in range(1, steps + 1):
            trainer._step(step)
    rows = trainer.recorder.rows
    times = [r["step_time_s"] for r in rows]
    steady = times[2:] or times
    tokens = [r["num_tokens"] for r in rows]
    out.update(
        {
            "grpo_step_s_all": [round(t, 2) for t in times],
            "grpo_step_s": round(median(steady), 2),
            "grpo_completion_tok_s": round(
                median(
                    [
                        r["completions/mean_length"] * trainer.config.samples_per_step / r["step_time_s"]
                        for r in rows[2:] or rows
                    ]
                ),
                1,
            ),
            "grpo_phase_s": {
                p: round(median([r[f"time/{p}_s"] for r in rows[2:] or rows]), 2)
                for p in ("generate", "sleep", "score", "update", "sync")
            },
            # generate_vllm: inside the worker's vLLM call; the rest of generate is Ray and packing
            "grpo_phase_s_all": {
                p: [round(r[f"time/{p}_s"], 2) for r in rows] for p in ("generate", "generate_vllm", "update")
            },
            "grpo_tokens_per_step": int(median(tokens)),
            "peak_memory_gib": peak.peak_gib,
            "logprob_mismatch_mean": round(median([r["sampling/logprob_mismatch"] for r in rows]), 4),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--gmu", type=float, default=0.2, help="vLLM's share: the KV cache needs about 2 GB here")
    parser.add_argument(
        "--checkpointing",
        nargs="?",
        const="true",
        default="false",
        choices=["true", "false", "unsloth"],
        help="learner activation checkpointing; 'unsloth': checkpoints wait in pinned host memory",
    )
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--step-only", action="store_true", help="only the GRPO steps and their peak memory")
    parser.add_argument("--sync-only", action="store_true", help="only the adapter sync (its paths and the disk's)")
    parser.add_argument(
        "--sleep", action="store_true", help="vllm_enable_sleep_mode: vLLM sleeps while the learner trains"
    )
    parser.add_argument("--compile", action="store_true", help="torch_compile: the learner's decoder layers compiled")
    parser.add_argument(
        "--max-staleness", type=int, default=0, help="1: one step off-policy (next batch made during the update)"
    )
    parser.add_argument(
        "--rollout-batches",
        default="",
        help="with --step-only: after the steps, the rollout throughput at these batches (the trained adapter)",
    )
    args = parser.parse_args()
    if args.step_only and args.sync_only:
        parser.error("--step-only and --sync-only: give one (each alone leaves out the other's figures)")
    checkpointing = {"true": True, "false": False}.get(args.checkpointing, args.checkpointing)
    from rlactors import GRPOTrainer

    rows = [{"prompt": p} for p in prompts(4096)]
    config = config_for(
        args.model,
        args.smoke,
        args.steps,
        args.gmu,
        checkpointing,
        args.micro_batch,
        args.sleep,
        args.compile,
        args.max_staleness,
    )
    trainer = GRPOTrainer(config, reward_funcs=[length_reward], train_dataset=rows)
    out: dict = {
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "sleep": args.sleep,
        "compile": args.compile,
        "gradient_checkpointing": config.gradient_checkpointing,
        "micro_batch_size": config.micro_batch_size,
        "max_staleness": config.max_staleness,
    }
    launched = time.perf_counter()
    owns_ray = trainer._init_ray()
    try:
        start = time.perf_counter()
        trainer._start()
        out["rlactors_startup_s"] = round(time.perf_counter() - start, 1)
        batches = [16] if args.smoke else [64, 256]
        everything = not (args.step_only or args.sync_only)
        if everything:
            rollout_throughput(trainer, batches, "base", out)
        if not args.sync_only:
            grpo_steps(trainer, args.steps, out)
            # Ray's start, the actors' and the first step: what a user waits for (steps follow at once)
            out["rlactors_first_step_s"] = round(
                start - launched + out["rlactors_startup_s"] + out["grpo_step_s_all"][0], 1
            )
        if everything:
            rollout_throughput(trainer, batches, "lora", out)
        elif args.rollout_batches:
            rollout_throughput(trainer, [int(b) for b in args.rollout_batches.split(",")], "lora", out)
        if not args.step_only:
            adapter_sync(trainer, 4 if args.smoke else 8, out)
    finally:
        trainer._stop(owns_ray)
    part = "_step" if args.step_only else "_sync" if args.sync_only else ""
    save_piece("rlactors" + part + ("_async" if args.max_staleness and args.step_only else ""), out)


if __name__ == "__main__":
    main()
