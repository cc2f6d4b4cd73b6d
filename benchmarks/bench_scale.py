"""The GRPO step on N GPUs of one host beside the 1-GPU figure, same process, one after the other:

    1 GPU colocated (on-policy, then max_staleness 1);
    N GPUs colocated: a rollout and a learner on every GPU, N learners data-parallel (NCCL);
    N GPUs colocated, max_staleness 1;
    N GPUs disaggregated: N/2 GPUs of rollout workers, N/2 of data-parallel learners (on-policy,
    then max_staleness 1).

The workload per GPU is that of `bench_rlactors.py` (16 prompts x 8 x 256 tokens, LoRA r=64):
N GPUs take N times the prompts (weak scaling). Scaling efficiency = completion tokens/s per GPU
over the 1-GPU on-policy figure.

    python benchmarks/bench_scale.py --model DIR --gpus 2 [--steps 8] [--only 1gpu,2gpu_colocate] [--smoke]

Results accumulate in `$BENCH_PIECES/scale<N>.json` after every variant, so a run split over
several calls (`--only`) on one machine ends with one file and one table. Peak memory is that
of GPU 0 (device-wide).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_rlactors import config_for, grpo_steps, length_reward
from common import load_pieces, prompts, save_piece


def variants(gpus: int) -> list[tuple[str, int, dict]]:
    """(name, GPUs used, config changes)."""
    out = [("1gpu", 1, {}), ("1gpu_async", 1, {"max_staleness": 1})]
    if gpus > 1:
        many = {"num_rollout_workers": gpus, "num_learner_workers": gpus}
        out += [(f"{gpus}gpu_colocate", gpus, many), (f"{gpus}gpu_colocate_async", gpus, {**many, "max_staleness": 1})]
        half = gpus // 2
        apart = {
            "placement": "disaggregate",
            "num_rollout_workers": half,
            "num_learner_workers": half,
            "gpu_memory_utilization": 0.5,
        }
        out += [
            (f"{gpus}gpu_disaggregate", gpus, apart),
            (f"{gpus}gpu_disaggregate_async", gpus, {**apart, "max_staleness": 1}),
        ]
    return out


def run(config, steps: int) -> dict:
    from rlactors import GRPOTrainer

    trainer = GRPOTrainer(config, reward_funcs=[length_reward], train_dataset=[{"prompt": p} for p in prompts(8192)])
    out: dict = {}
    trainer._start()
    try:
        grpo_steps(trainer, steps, out)
    finally:
        trainer._stop(owns_ray=False)
    return out


def main() -> None:
    import ray

    from rlactors import GRPOConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (logical CPUs stand in for GPUs)")
    args = parser.parse_args()
    chosen = [v for v in variants(args.gpus) if not args.only or v[0] in args.only.split(",")]
    if not chosen:
        raise SystemExit(f"--only {args.only!r} names none of {[v[0] for v in variants(args.gpus)]}")
    if args.smoke:
        ray.init(address="local", num_cpus=2 * args.gpus + 2, include_dashboard=False)
    else:
        ray.init(include_dashboard=False)
    base = config_for(args.model, args.smoke, args.steps, 0.2, checkpointing=False, micro=32).model_dump()
    out: dict = {**load_pieces().get(f"scale{args.gpus}", {}), "gpus": args.gpus}  # earlier calls' variants
    for name, used, changes in chosen:
        values = {**base, **changes, "prompts_per_step": base["prompts_per_step"] * used}
        result = run(GRPOConfig(**values), args.steps)
        per_gpu = result["grpo_completion_tok_s"] / used
        out[name] = {**result, "gpus_used": used, "completion_tok_s_per_gpu": round(per_gpu, 1)}
        add_efficiency(out)
        save_piece(f"scale{args.gpus}", out)
    print_table(out)
    ray.shutdown()


def add_efficiency(out: dict) -> None:
    """Scaling efficiency = tokens/s per GPU over the 1-GPU on-policy figure, once that is measured."""
    first = out.get("1gpu", {}).get("completion_tok_s_per_gpu")
    for r in out.values():
        if first and isinstance(r, dict):
            r["scaling_efficiency"] = round(r["completion_tok_s_per_gpu"] / first, 3)


def print_table(out: dict) -> None:
    print(f"\n{'variant':<26} {'GPUs':>4} {'step s':>7} {'tok/s':>9} {'tok/s/GPU':>10} {'eff.':>6} {'peak GiB':>9}")
    for name, r in out.items():
        if isinstance(r, dict):
            print(
                f"{name:<26} {r['gpus_used']:>4} {r['grpo_step_s']:>7} {r['grpo_completion_tok_s']:>9} "
                f"{r['completion_tok_s_per_gpu']:>10.1f} {r.get('scaling_efficiency', float('nan')):>6.2f} "
                f"{r['peak_memory_gib']:>9}"
            )


if __name__ == "__main__":
    main()
