"""The GRPO step with the learners' log-prob passes run while the rewards are scored
(`overlap_scoring: true`, the default) beside the same step with the two one after the other,
same trainer and process, alternating step by step so both see the same machine.

    python benchmarks/bench_overlap.py --model DIR [--judge-s 1.0] [--prompts 4 --tokens 32] [--smoke]

`beta` 0.04 (KL to the base model), so every update first needs the base model's log-probs. The
reward stands in for a remote judge or a sandbox: it waits `--judge-s` seconds per call, as a
request to one would, then scores by length.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_rlactors import config_for, length_reward
from common import median, prompts, save_piece

AHEAD = "learner/reference_passes_ahead"


def judge_reward(judge_s: float):
    def judge(prompts, completions, **kwargs):
        time.sleep(judge_s)
        return length_reward(prompts, completions, **kwargs)

    return judge


def main() -> None:
    from rlactors import GRPOConfig, GRPOTrainer

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=10, help="steps 3.. alternate: overlapped, then not")
    parser.add_argument("--judge-s", type=float, default=1.0, help="seconds the reward waits per call")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (default: the GRPO workload's)")
    parser.add_argument("--tokens", type=int, default=None, help="completion tokens (default: the workload's)")
    parser.add_argument("--gmu", type=float, default=0.2)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    values = config_for(args.model, args.smoke, args.steps, args.gmu, checkpointing=False, micro=32).model_dump()
    values["beta"] = 0.04
    if args.prompts:
        values["prompts_per_step"] = args.prompts
    if args.tokens:
        values.update(
            max_completion_length=args.tokens,
            generation_kwargs={**values["generation_kwargs"], "min_tokens": args.tokens},
        )
    config = GRPOConfig(**values)
    rows = [{"prompt": p} for p in prompts(4096)]
    trainer = GRPOTrainer(config, reward_funcs=[judge_reward(args.judge_s)], train_dataset=rows)
    owns_ray = trainer._init_ray()
    try:
        trainer._start()
        for step in range(1, args.steps + 1):
            # The flag is read by the driver only; the learners serve both orders.
            trainer.config = config.model_copy(update={"overlap_scoring": step % 2 == 1})
            trainer._step(step)
    finally:
        trainer._stop(owns_ray)
    steady = trainer.recorder.rows[2:]
    out: dict = {
        "judge_s": args.judge_s,
        "beta": config.beta,
        "prompts_per_step": config.prompts_per_step,
        "completion_tokens": config.max_completion_length,
    }
    for tag, ahead in (("overlapped", 1.0), ("one_after_other", 0.0)):
        picked = [r for r in steady if r[AHEAD] == ahead]
        out[f"{tag}_step_s_all"] = [round(r["step_time_s"], 3) for r in picked]
        out[f"{tag}_step_s"] = round(median([r["step_time_s"] for r in picked]), 3)
        out[f"{tag}_phase_s"] = {
            p: round(median([r[f"time/{p}_s"] for r in picked]), 3) for p in ("generate", "score", "update", "sync")
        }
    out["overlapped_vs_one_after_other"] = round(out["overlapped_step_s"] / out["one_after_other_step_s"], 3)
    save_piece("overlap", out)
    print(
        f"\nGRPO step with beta {config.beta} and a {args.judge_s} s reward, median of steps 3..{args.steps} "
        f"by kind: overlapped {out['overlapped_step_s']} s {out['overlapped_phase_s']}, one after the other "
        f"{out['one_after_other_step_s']} s {out['one_after_other_phase_s']}: "
        f"{out['overlapped_vs_one_after_other']}x"
    )


if __name__ == "__main__":
    main()
