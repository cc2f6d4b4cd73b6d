"""The GRPO step on one GPU, colocated: on-policy (max_staleness 0) beside one-step-off-policy
(max_staleness 1, generation of step n+1 overlapping the update of step n), same workload and
process, one after the other.

    python benchmarks/bench_async.py --model DIR [--eager] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_rlactors import config_for, grpo_steps, length_reward
from common import prompts, save_piece


def run(config, steps: int) -> dict:
    from rlactors import GRPOTrainer

    trainer = GRPOTrainer(config, reward_funcs=[length_reward], train_dataset=[{"prompt": p} for p in prompts(4096)])
    out: dict = {}
    owns_ray = trainer._init_ray()
    try:
        trainer._start()
        grpo_steps(trainer, steps, out)
        out["staleness"] = [r["staleness"] for r in trainer.recorder.rows]
    finally:
        trainer._stop(owns_ray)
    return out


def main() -> None:
    from rlactors import GRPOConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--gmu", type=float, default=0.2)
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs: a shorter vLLM start")
    args = parser.parse_args()
    base = config_for(args.model, args.smoke, args.steps, args.gmu, checkpointing=False, micro=32).model_dump()
    if args.eager:
        base["engine_kwargs"] = {**base["engine_kwargs"], "enforce_eager": True}
    out: dict = {"eager": args.eager}
    for staleness in (0, 1):
        result = run(GRPOConfig(**{**base, "max_staleness": staleness}), args.steps)
        out.update({f"{key}_staleness{staleness}": value for key, value in result.items()})
    sync, overlapped = out["grpo_step_s_staleness0"], out["grpo_step_s_staleness1"]
    out["async_step_vs_sync"] = round(overlapped / sync, 3)
    save_piece("async", out)
    print(
        f"\nGRPO step, median of steps 3..{args.steps}: on-policy {sync} s, one-step-off-policy {overlapped} s "
        f"({out['async_step_vs_sync']}x)"
    )
    for staleness in (0, 1):
        print(
            f"  max_staleness {staleness}: phases {out[f'grpo_phase_s_staleness{staleness}']}, "
            f"completion tokens/s {out[f'grpo_completion_tok_s_staleness{staleness}']}, "
            f"peak {out[f'peak_memory_gib_staleness{staleness}']} GiB, "
            f"staleness {out[f'staleness_staleness{staleness}']}"
        )


if __name__ == "__main__":
    main()
