"""Wall-clock to reward 0.8 on the README's main example: rlactors beside TRL, on one machine, in one run.

    python benchmarks/bench_time_to_reward.py --model /tmp/smollm2 [--steps 30] [--target 0.8] [--rounds 1]

What a user compares: how long from launching the command until the model is good at the task.
rlactors runs as a user runs it (`python -m rlactors train examples/arithmetic_grpo.yaml`); TRL runs
`baselines/trl_arithmetic.py`, its GRPOTrainer on the same task, model, group, LoRA and learning
rate. Each run is a process of its own, so each pays its own start. A run "reaches" the target at
the first step where the mean reward of that step and the two before it is >= `--target` (the
GPU learning test's rule); its time is the wall-clock from launch to that step's row. With
`--rounds N` the two alternate (rlactors, TRL, rlactors, ...) and the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import gpu_name, median, save_piece, versions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def follow(path: str, rows: list[dict], stop: threading.Event, started: float) -> None:
    """Appends each new JSON line of `path` to `rows` with `arrived_s`, seconds since `started`."""
    while not os.path.exists(path):
        if stop.wait(0.2):
            return
    with open(path) as f:
        pending = ""
        while not stop.wait(0.2):
            pending += f.read()  # what was written since the last look
            *lines, pending = pending.split("\n")  # a line still being written waits for its end
            for line in filter(str.strip, lines):
                rows.append({**json.loads(line), "arrived_s": round(time.perf_counter() - started, 2)})


def reached(rows: list[dict], target: float) -> dict | None:
    """The first row where the mean reward of it and the two rows before it is >= `target`."""
    rewards = [row["reward"] for row in rows]
    for i in range(2, len(rows)):
        if sum(rewards[i - 2 : i + 1]) / 3 >= target:
            return rows[i]
    return None


def run(name: str, command: list[str], rows_path: str, target: float, timeout_s: float) -> dict:
    if os.path.exists(rows_path):
        os.remove(rows_path)
    rows: list[dict] = []
    stop = threading.Event()
    started = time.perf_counter()
    watcher = threading.Thread(target=follow, args=(rows_path, rows, stop, started), daemon=True)
    watcher.start()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    total = time.perf_counter() - started
    time.sleep(0.5)  # the last row's line
    stop.set()
    watcher.join()
    hit = reached(rows, target)
    result = {
        "framework": name,
        "rc": done.returncode,
        "total_s": round(total, 1),
        "steps": len(rows),
        "first_step_s": rows[0]["arrived_s"] if rows else None,
        "time_to_target_s": hit["arrived_s"] if hit else None,
        "step_at_target": hit["step"] if hit else None,
        "rewards": [round(row["reward"], 3) for row in rows],
    }
    if done.returncode != 0:
        result["tail"] = (done.stdout[-1500:] + done.stderr[-1500:]).splitlines()[-20:]
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/smollm2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", choices=["rlactors", "trl"], help="one side alone (a check of its script)")
    parser.add_argument("--work", default="/tmp/rlactors-time-to-reward")
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override of the rlactors run, as `rlactors train --set` (repeatable)",
    )
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)

    def command(name: str, number: int) -> tuple[list[str], str]:
        """The command of run `number` of `name`, and the JSON-lines file its steps go to."""
        out_dir = os.path.join(args.work, f"{name}-{number}")
        if name == "rlactors":
            sets = [f"model_name={args.model}", f"max_steps={args.steps}", "save_steps=0", f"output_dir={out_dir}"]
            sets += args.sets
            argv = ["-m", "rlactors", "train", "examples/arithmetic_grpo.yaml"]
            return [sys.executable, *argv, *(x for s in sets for x in ("--set", s))], f"{out_dir}/metrics.jsonl"
        rows = f"{out_dir}.jsonl"
        argv = ["benchmarks/baselines/trl_arithmetic.py", "--model", args.model, "--steps", str(args.steps)]
        return [sys.executable, *argv, "--log", rows, "--output-dir", out_dir], rows

    names = [args.only] if args.only else ["rlactors", "trl"]
    results = [
        run(name, *command(name, number), args.target, args.timeout_s)
        for number in range(1, args.rounds + 1)
        for name in names
    ]

    def over_runs(name: str, key: str) -> float | None:
        values = [r[key] for r in results if r["framework"] == name and r[key] is not None]
        return median(values) if values else None

    summary = {name: {k: over_runs(name, k) for k in ("time_to_target_s", "first_step_s")} for name in names}
    ours, theirs = summary.get("rlactors", {}), summary.get("trl", {})
    ratio = None
    if ours.get("time_to_target_s") and theirs.get("time_to_target_s"):
        ratio = round(ours["time_to_target_s"] / theirs["time_to_target_s"], 3)
    piece = {
        "device": gpu_name(),
        "versions": versions(),
        "target": args.target,
        "steps": args.steps,
        "rlactors_sets": args.sets,
        "runs": results,
        "median": summary,
        "time_to_target_vs_trl": ratio,
    }
    print(f"\n{'framework':<10} {'to reward ' + str(args.target):>16} {'first step':>11}  (medians, seconds)")
    for name, values in summary.items():
        print(
            f"{name:<10} {values['time_to_target_s'] or float('nan'):>16} {values['first_step_s'] or float('nan'):>11}"
        )
    print(f"rlactors / TRL, time to reward {args.target}: {ratio}")
    save_piece("time_to_reward", piece)


if __name__ == "__main__":
    main()
