"""The GRPO step on N GPUs of one host beside the 1-GPU figure, same process, one after the other:

    1 GPU colocated (on-policy, then max_staleness 1);
    N GPUs colocated: a rollout and a learner on every GPU, N learners data-parallel (NCCL);
    N GPUs colocated, max_staleness 1;
    N GPUs disaggregated: N/2 GPUs of rollout workers, N/2 of data-parallel learners.

The workload per GPU is that of `bench_rlactors.py` (16 prompts x 8 x 256 tokens, LoRA r=64):
N GPUs take N times the prompts (weak scaling). Scaling efficiency = completion tokens/s per GPU
over the 1-GPU on-policy figure.

    python benchmarks/bench_scale.py --model DIR --gpus 2 [--steps 8] [--smoke]

Peak memory is that of GPU 0 (device-wide).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_rlactors import config_for, grpo_steps, length_reward  # noqa: E402
from common import prompts, save_piece  # noqa: E402


def variants(gpus: int) -> list[tuple[str, int, dict]]:
    """(name, GPUs used, config changes)."""
    out = [("1gpu", 1, {}), ("1gpu_async", 1, {"max_staleness": 1})]
    if gpus > 1:
        many = {"num_rollout_workers": gpus, "num_learner_workers": gpus}
        out += [(f"{gpus}gpu_colocate", gpus, many), (f"{gpus}gpu_colocate_async", gpus, {**many, "max_staleness": 1})]
        half = gpus // 2
        out.append((f"{gpus}gpu_disaggregate", gpus, {"placement": "disaggregate", "num_rollout_workers": half,
                                                     "num_learner_workers": half, "gpu_memory_utilization": 0.5}))
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
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (logical CPUs stand in for GPUs)")
    args = parser.parse_args()
    if args.smoke:
        ray.init(num_cpus=2 * args.gpus + 2, include_dashboard=False)
    else:
        ray.init(include_dashboard=False)
    base = config_for(args.model, args.smoke, args.steps, 0.2, checkpointing=False, micro=32).model_dump()
    out: dict = {"gpus": args.gpus}
    table = []
    for name, used, changes in variants(args.gpus):
        values = {**base, **changes, "prompts_per_step": base["prompts_per_step"] * used}
        result = run(GRPOConfig(**values), args.steps)
        per_gpu = result["grpo_completion_tok_s"] / used
        out[name] = {**result, "gpus_used": used, "completion_tok_s_per_gpu": round(per_gpu, 1)}
        table.append((name, used, result["grpo_step_s"], result["grpo_completion_tok_s"], per_gpu,
                      result["peak_memory_gib"]))
    first = out["1gpu"]["completion_tok_s_per_gpu"]
    for name in out:
        if isinstance(out[name], dict):
            out[name]["scaling_efficiency"] = round(out[name]["completion_tok_s_per_gpu"] / first, 3)
    save_piece(f"scale{args.gpus}", out)
    print(f"\n{'variant':<22} {'GPUs':>4} {'step s':>7} {'tok/s':>9} {'tok/s/GPU':>10} {'eff.':>6} {'peak GiB':>9}")
    for name, used, step_s, tok_s, per_gpu, peak in table:
        print(f"{name:<22} {used:>4} {step_s:>7} {tok_s:>9} {per_gpu:>10.1f} {per_gpu / first:>6.2f} {peak:>9}")
    ray.shutdown()


if __name__ == "__main__":
    main()
