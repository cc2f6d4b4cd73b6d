"""All GPU benchmarks, rlactors beside its baselines on the same machine, then one table.

    python benchmarks/run_all.py                      # every part, in order (about 15 min on an H100)
    python benchmarks/run_all.py --parts bare,rlactors --model-shape llama-1b
    python benchmarks/run_all.py --parts bare,bare_mp   # vLLM in-process (as a rollout worker) vs its default
    python benchmarks/run_all.py --parts async,profile  # one-step-off-policy; where the step's time goes
    python benchmarks/run_all.py --parts memory --memory-gmu 0.2  # all three at one vLLM share
    python benchmarks/run_all.py --parts step,trl,unsloth --rounds 3  # the step comparison, alternated
    python benchmarks/run_all.py --parts bare,step,step_async,trl --round 2  # one round of it (split over calls);
                                                      # bare and step then also compare generation at batch 128
    python benchmarks/run_all.py --parts sync         # the adapter sync alone (paths and disk), piece rlactors_sync
    python benchmarks/run_all.py --parts overlap      # rewards scored while the learners run their log-prob passes
    python benchmarks/run_all.py --report [--memory-gmu 0.1]  # the table and JSON from the parts run so far

Each part runs in its own process (each needs the whole GPU) and leaves a JSON piece in
$BENCH_PIECES (default /tmp/rlactors-bench); the report writes benchmarks/results/<gpu>-<date>.json
($BENCH_RESULTS to write elsewhere)
(and a copy in $OUT when set). Ratios are rlactors over the baseline.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import gpu_name, load_pieces, make_model, median, save_piece, versions

MODEL = "/tmp/model1b"  # the baselines' scripts read the model from here
MEMORY_PARTS = ("memory_rlactors", "memory_trl", "memory_unsloth")
PARTS = ("bare", "bare_mp", "rlactors", "async", "profile", "trl", "unsloth") + MEMORY_PARTS
SCRIPTS = {
    "bare": "bench_bare.py",
    "bare_mp": "bench_bare.py",
    "rlactors": "bench_rlactors.py",
    "step": "bench_rlactors.py",
    "step_async": "bench_rlactors.py",
    "sync": "bench_rlactors.py",
    "async": "bench_async.py",
    "profile": "profile_step.py",
    "overlap": "bench_overlap.py",
}
# bare_mp: bare vLLM with its engine core in a process of its own (vLLM's default), beside the
# in-process engine every rollout worker runs (bare): what running in-process costs decoding.
# step: the GRPO steps alone in a fresh process (piece rlactors_step), the part `--rounds` alternates
# with the baselines' steps; step_async: the same steps one step off-policy (max_staleness 1, piece
# rlactors_step_async), the figure the issue reports beside the on-policy one. sync: the adapter
# sync alone (piece rlactors_sync), which the report takes over the rlactors part's. overlap: the
# step with beta > 0 and a reward that waits (a judge), the learners' log-prob passes overlapped
# with the scoring or not, alternating step by step.
EXTRA_PARTS = ("step", "step_async", "sync", "overlap")
ARGS = {
    "bare_mp": ["--multiprocessing", "--skip-hf"],
    "step": ["--step-only", "--steps", "8"],
    "step_async": ["--step-only", "--steps", "8", "--max-staleness", "1"],
    "sync": ["--sync-only"],
    "overlap": ["--steps", "8", "--judge-s", "0.5"],
}
# In a round, generation is compared at the step's own batch (16 prompts x 8; smoke: 2 x 8): bare
# vLLM's log-prob sampling beside the rollout worker's once the step part has trained its adapter.
ROUND_BATCH = {False: 128, True: 16}
PIECE_NAMES = {  # else the part's
    "step": "rlactors_step",
    "step_async": "rlactors_step_async",
    "sync": "rlactors_sync",
    "memory_rlactors": "rlactors_step",
}
# The memory comparison: the GRPO step of all three at one vLLM share, each framework's lowest-memory
# learner setting (rlactors: vLLM asleep while the learner trains, activation checkpointing).
MEMORY_RLACTORS = ["--step-only", "--sleep", "--checkpointing", "true"]
PIECES = os.environ.get("BENCH_PIECES", "/tmp/rlactors-bench")
RESULTS = os.environ.get("BENCH_RESULTS", f"{HERE}/results")


def memory_pieces(gmu: float) -> str:
    """The memory parts' pieces at one vLLM share: a folder per share, never compared across."""
    return os.path.join(PIECES, f"memory-gmu{gmu}")


def round_pieces(number: int) -> str:
    """Round `number`'s pieces of an alternated comparison (`--rounds`)."""
    return os.path.join(PIECES, f"round{number}")


def run_part(
    part: str,
    model: str,
    smoke: bool,
    skip_hf: bool = False,
    baseline_gmu: float | None = None,
    memory_gmu: float = 0.2,
    out: str | None = None,
    in_round: bool = False,
) -> None:
    base = part.removeprefix("memory_")
    out = out or (memory_pieces(memory_gmu) if part in MEMORY_PARTS else PIECES)
    if base in SCRIPTS:
        cmd = [sys.executable, f"{HERE}/{SCRIPTS[base]}", "--model", model] + (["--smoke"] if smoke else [])
        cmd += ["--skip-hf"] if skip_hf and part == "bare" else []
        cmd += ARGS.get(part, []) + batch_args(part, smoke, in_round)
        cmd += MEMORY_RLACTORS + ["--gmu", str(memory_gmu)] if part in MEMORY_PARTS else []
    else:
        cmd = [sys.executable, f"{HERE}/baselines/{base}_baseline.py"]
    print(f"== {part}: {' '.join(cmd)}", flush=True)
    env = {**os.environ, "OUT": out, "BENCH_PIECES": out}
    os.makedirs(out, exist_ok=True)  # the baselines' scripts write their piece there
    gmu = memory_gmu if part in MEMORY_PARTS else baseline_gmu
    if gmu is not None:
        env["BASELINE_GMU"] = str(gmu)
    if base == "unsloth" and os.path.isdir("/tmp/site_u"):
        env["PYTHONPATH"] = "/tmp/site_u:" + env.get("PYTHONPATH", "")
    started = time.time()
    done = subprocess.run(cmd, env=env)
    if done.returncode != 0:
        # A part may save its figures and then die in interpreter teardown (vLLM's threads); the
        # record says which, so a figure is never taken from a run that did not finish.
        piece = os.path.join(out, f"{PIECE_NAMES.get(part, base)}.json")
        saved = os.path.exists(piece) and os.path.getmtime(piece) >= started
        save_piece(f"{part}_exit", {"returncode": done.returncode, "figures_saved_before_exit": saved})


def batch_args(part: str, smoke: bool, in_round: bool) -> list[str]:
    """Rollout batches: `bare_mp` at the largest alone; in a round, `bare` and `step` at the step's."""
    if part == "bare_mp":
        return ["--batches", "16" if smoke else "256"]
    flag = {"bare": "--batches", "step": "--rollout-batches"}.get(part)
    return [flag, str(ROUND_BATCH[smoke])] if in_round and flag else []


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def largest_batch(a: dict, a_prefix: str, b: dict, b_prefix: str, suffix: str) -> int | None:
    """The largest batch N with both `{a_prefix}{N}{suffix}` in piece a and `{b_prefix}{N}{suffix}`
    in piece b (256 on a GPU)."""
    sizes = [int(key[len(a_prefix) : -len(suffix)]) for key in a if key.startswith(a_prefix) and key.endswith(suffix)]
    return max((n for n in sizes if f"{b_prefix}{n}{suffix}" in b), default=None)


def report(shape: str, memory_gmu: float) -> dict:
    pieces = load_pieces()
    bare, ours = pieces.get("bare", {}), pieces.get("rlactors", {})
    # The sync part's figures, when it ran, over the rlactors part's.
    sync_piece = "rlactors_sync" if "rlactors_sync" in pieces else "rlactors"
    sync = pieces.get(sync_piece, {})
    trl, uns = pieces.get("trl", {}), pieces.get("unsloth", {})
    overlapped, profile = pieces.get("async", {}), pieces.get("profile", {})
    result = {
        "gpu": gpu_name(),
        "date": datetime.date.today().isoformat(),
        "versions": versions(),
        "model_shape": shape,
        "rollout_batch": (b := largest_batch(ours, "rlactors_rollout_bs", bare, "bare_vllm_bs", "_lora_tok_s")),
        "rollout_vs_bare_vllm": ratio(
            ours.get(f"rlactors_rollout_bs{b}_lora_tok_s"), bare.get(f"bare_vllm_bs{b}_lora_tok_s")
        ),
        "rollout_vs_bare_vllm_no_adapter": ratio(
            ours.get(f"rlactors_rollout_bs{b}_base_tok_s"), bare.get(f"bare_vllm_bs{b}_base_tok_s")
        ),
        "rollout_vs_bare_vllm_same_logprobs": ratio(
            ours.get(f"rlactors_rollout_bs{b}_lora_tok_s"), bare.get(f"bare_vllm_bs{b}_lora_logprobs_tok_s")
        ),
        "adapter_sync_p50_ms": sync.get("adapter_sync_p50_ms"),
        "adapter_sync_in_step_p50_ms": sync.get("adapter_sync_in_step_p50_ms"),
        "adapter_sync_speedup_vs_disk": sync.get("adapter_sync_speedup_vs_disk"),
        "adapter_sync_piece": sync_piece,
        "grpo_step_s": ours.get("grpo_step_s"),
        "grpo_step_only_s": pieces.get("rlactors_step", {}).get("grpo_step_s"),
        "trl_grpo_step_s": trl.get("trl_step_s_median_last4"),
        "unsloth_grpo_step_s": uns.get("unsloth_step_s_median_last4"),
        "grpo_step_async_s": overlapped.get("grpo_step_s_staleness1"),
        "rollout_worker_vs_vllm_in_process": profile.get("rollout_worker_vs_vllm"),
        "update_vs_fp32_lora": profile.get("update_vs_fp32_lora"),
        "step_overlap_scoring_vs_not": pieces.get("overlap", {}).get("overlapped_vs_one_after_other"),
        "peak_memory_gib": ours.get("peak_memory_gib"),
        "trl_peak_memory_gib": trl.get("trl_peak_gpu_GiB"),
        "unsloth_peak_memory_gib": uns.get("unsloth_peak_gpu_GiB"),
    }
    mp = pieces.get("bare_mp", {})
    n = largest_batch(mp, "bare_vllm_bs", bare, "bare_vllm_bs", "_lora_logprobs_tok_s")
    result["bare_vllm_multiprocess_vs_in_process"] = ratio(
        mp.get(f"bare_vllm_bs{n}_lora_logprobs_tok_s"), bare.get(f"bare_vllm_bs{n}_lora_logprobs_tok_s")
    )
    result["grpo_step_vs_trl"] = ratio(result["grpo_step_s"], result["trl_grpo_step_s"])
    result["grpo_step_vs_unsloth"] = ratio(result["grpo_step_s"], result["unsloth_grpo_step_s"])
    result["grpo_step_async_vs_trl"] = ratio(result["grpo_step_async_s"], result["trl_grpo_step_s"])
    result["grpo_step_async_vs_unsloth"] = ratio(result["grpo_step_async_s"], result["unsloth_grpo_step_s"])
    result.update(rounds_report(shape == "tiny"))
    result.update(memory_report(memory_gmu))
    result["pieces"] = pieces
    suffix = "" if shape == "llama-1b" else f"-{shape}"
    name = f"{result['gpu'].replace(' ', '_')}-{result['date']}{suffix}.json"
    os.makedirs(RESULTS, exist_ok=True)
    for folder in filter(None, [RESULTS, os.environ.get("OUT")]):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(result, f, indent=1)
    print_table(result)
    return result


def rounds_report(smoke: bool = False) -> dict:
    """The comparison run in alternation (`--rounds N`: bare, step, trl, unsloth, bare, step, ...):
    each round's figures and ratios (generation against bare vLLM at the step's batch, the step
    against TRL's and Unsloth's, rlactors' first step), and the median over rounds of each. The host-bound generation
    drifts between runs on one machine; rounds put rlactors and its baselines through the same drift."""
    batch = ROUND_BATCH[smoke]
    names = os.listdir(PIECES) if os.path.isdir(PIECES) else []
    numbers = sorted(int(m.group(1)) for name in names if (m := re.fullmatch(r"round(\d+)", name)))
    rounds = []
    for number in numbers:
        pieces = load_pieces(round_pieces(number))
        ours, bare = pieces.get("rlactors_step", {}), pieces.get("bare", {})
        row = {
            "round": number,
            "rollout_tok_s": ours.get(f"rlactors_rollout_bs{batch}_lora_tok_s"),
            "bare_vllm_tok_s": bare.get(f"bare_vllm_bs{batch}_lora_logprobs_tok_s"),
            "first_step_s": ours.get("rlactors_first_step_s"),
            "grpo_step_s": ours.get("grpo_step_s"),
            "grpo_phase_s": ours.get("grpo_phase_s"),
            "grpo_step_async_s": pieces.get("rlactors_step_async", {}).get("grpo_step_s"),
            "trl_grpo_step_s": pieces.get("trl", {}).get("trl_step_s_median_last4"),
            "unsloth_grpo_step_s": pieces.get("unsloth", {}).get("unsloth_step_s_median_last4"),
        }
        row["rollout_vs_bare"] = ratio(row["rollout_tok_s"], row["bare_vllm_tok_s"])
        row["vs_trl"] = ratio(row["grpo_step_s"], row["trl_grpo_step_s"])
        row["async_vs_trl"] = ratio(row["grpo_step_async_s"], row["trl_grpo_step_s"])
        row["vs_unsloth"] = ratio(row["grpo_step_s"], row["unsloth_grpo_step_s"])
        rounds.append(row)
    if not rounds:
        return {}

    def over_rounds(key: str) -> float | None:
        values = [row[key] for row in rounds if row[key] is not None]
        return median(values) if values else None

    return {
        "rounds": rounds,
        "rounds_rollout_vs_bare_vllm": over_rounds("rollout_vs_bare"),
        "rounds_first_step_s": over_rounds("first_step_s"),
        "rounds_grpo_step_s": over_rounds("grpo_step_s"),
        "rounds_trl_grpo_step_s": over_rounds("trl_grpo_step_s"),
        "rounds_unsloth_grpo_step_s": over_rounds("unsloth_grpo_step_s"),
        "rounds_grpo_step_vs_trl": over_rounds("vs_trl"),
        "rounds_grpo_step_async_s": over_rounds("grpo_step_async_s"),
        "rounds_grpo_step_async_vs_trl": over_rounds("async_vs_trl"),
        "rounds_grpo_step_vs_unsloth": over_rounds("vs_unsloth"),
    }


def memory_report(gmu: float) -> dict:
    """The memory parts' figures: peak GPU memory and step of each framework at vLLM share `gmu`."""
    pieces = load_pieces(memory_pieces(gmu))
    if not pieces:
        return {}
    ours, trl, uns = pieces.get("rlactors_step", {}), pieces.get("trl", {}), pieces.get("unsloth", {})
    baselines = [p for p in (trl.get("trl_peak_gpu_GiB"), uns.get("unsloth_peak_gpu_GiB")) if p]
    return {
        "memory_gpu_memory_utilization": gmu,
        "memory_rlactors_setting": " ".join(MEMORY_RLACTORS),
        "memory_peak_gib": ours.get("peak_memory_gib"),
        "memory_trl_peak_gib": trl.get("trl_peak_gpu_GiB"),
        "memory_unsloth_peak_gib": uns.get("unsloth_peak_gpu_GiB"),
        "memory_vs_lower_baseline": ratio(ours.get("peak_memory_gib"), min(baselines, default=None)),
        "memory_grpo_step_s": ours.get("grpo_step_s"),
        "memory_trl_step_s": trl.get("trl_step_s_median_last4"),
        "memory_unsloth_step_s": uns.get("unsloth_step_s_median_last4"),
        "memory_pieces": pieces,
    }


def print_table(result: dict) -> None:
    rows = [(k, v) for k, v in result.items() if k not in ("pieces", "memory_pieces", "versions", "rounds")]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    for row in result.get("rounds", []):
        print(f"{'round ' + str(row['round']):<{width}}  {row}")
    print(f"{'versions':<{width}}  {result['versions']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--model-shape", default="llama-1b")
    parser.add_argument("--tokenizer", default=os.environ.get("TOKENIZER_DIR", "models/smollm2"))
    parser.add_argument("--report", action="store_true", help="only merge the pieces and print the table")
    parser.add_argument("--smoke", action="store_true", help="tiny model and sizes: a CPU check of the scripts")
    parser.add_argument("--skip-hf", action="store_true", help="bare part: skip the slow HF generate baseline")
    parser.add_argument(
        "--baseline-gmu",
        type=float,
        default=None,
        help="trl/unsloth parts: vLLM's gpu_memory_utilization (default 0.5, their scripts' own)",
    )
    parser.add_argument(
        "--memory-gmu", type=float, default=0.2, help="memory parts: the one gpu_memory_utilization all three run at"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the parts this many times in alternation, each round's pieces apart"
    )
    parser.add_argument(
        "--round",
        type=int,
        default=None,
        help="run the parts once as round N of an alternated comparison split over several calls",
    )
    parser.add_argument("--fresh", action="store_true", help="forget pieces of earlier runs")
    args = parser.parse_args()
    parts = [p for name in args.parts.split(",") for p in (MEMORY_PARTS if name == "memory" else [name])]
    known = PARTS + EXTRA_PARTS
    if unknown := [p for p in parts if p not in known]:
        parser.error(f"--parts: unknown part(s) {', '.join(unknown)}; choose from {', '.join(known)} or memory")
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds} runs nothing; give 1 or more")
    if args.round is not None and (args.round < 1 or args.rounds > 1):
        parser.error(f"--round: {args.round} with --rounds {args.rounds}; give --round N (N >= 1) without --rounds")
    if args.fresh:
        shutil.rmtree(PIECES, ignore_errors=True)
    if not args.report:
        model = make_model(
            "/tmp/model-tiny" if args.smoke else MODEL, "tiny" if args.smoke else args.model_shape, args.tokenizer
        )
        numbers = [args.round] if args.round else range(1, args.rounds + 1)
        in_round = args.rounds > 1 or args.round is not None
        for number in numbers:
            for part in parts:
                run_part(
                    part,
                    model,
                    args.smoke,
                    args.skip_hf,
                    args.baseline_gmu,
                    args.memory_gmu,
                    out=round_pieces(number) if in_round else None,
                    in_round=in_round,
                )
    report("tiny" if args.smoke else args.model_shape, args.memory_gmu)


if __name__ == "__main__":
    main()
