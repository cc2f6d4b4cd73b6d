"""The GPU benchmarks' scripts on CPU (`run_all.py --smoke`: a tiny model, tiny sizes), so they
do not rot between GPU leases: every part that can run without CUDA runs, and the report holds
the keys the issue's results are read by. The baselines (TRL, Unsloth) need CUDA: not run here."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORT_KEYS = {
    "gpu",
    "date",
    "versions",
    "rollout_vs_bare_vllm",
    "adapter_sync_p50_ms",
    "adapter_sync_speedup_vs_disk",
    "grpo_step_s",
    "trl_grpo_step_s",
    "unsloth_grpo_step_s",
    "grpo_step_vs_trl",
    "grpo_step_vs_unsloth",
    "peak_memory_gib",
    "trl_peak_memory_gib",
    "unsloth_peak_memory_gib",
}


def test_run_all_smoke_runs_every_cpu_part_and_writes_the_report(smollm2, tmp_path):
    env = {**os.environ, "BENCH_PIECES": str(tmp_path / "pieces"), "BENCH_RESULTS": str(tmp_path / "results")}
    cmd = [
        sys.executable,
        "benchmarks/run_all.py",
        "--smoke",
        "--tokenizer",
        smollm2,
        "--parts",
        # `step`, `sync` and `memory_rlactors` are bench_rlactors.py again with --step-only, --sync-only
        # or --step-only --sleep --checkpointing true, `bare_mp` bench_bare.py with --multiprocessing:
        # their commands and report wiring are checked without an engine below
        "bare,rlactors,profile,overlap",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "_exit" not in " ".join(os.listdir(tmp_path / "pieces"))  # every part finished
    [name] = os.listdir(tmp_path / "results")
    with open(tmp_path / "results" / name) as f:
        report = json.load(f)
    assert REPORT_KEYS <= set(report) and report["gpu"] == "cpu" and report["model_shape"] == "tiny"
    assert report["rollout_batch"] == 16  # the smoke batch; 256 on a GPU
    assert report["adapter_sync_piece"] == "rlactors"  # no sync part ran: the rlactors part's figures
    assert report["adapter_sync_in_step_p50_ms"] <= report["adapter_sync_p50_ms"]  # no probe in a step's sync
    for key in (
        "rollout_vs_bare_vllm",
        "adapter_sync_p50_ms",
        "adapter_sync_speedup_vs_disk",
        "grpo_step_s",
        "rollout_worker_vs_vllm_in_process",
        "update_vs_fp32_lora",
        "step_overlap_scoring_vs_not",
    ):
        assert report[key] is not None and report[key] > 0, key
    assert report["trl_grpo_step_s"] is None and report["grpo_step_vs_trl"] is None  # no figure is made up


def test_report_takes_the_sync_and_step_parts_over_the_rlactors_part(tmp_path, monkeypatch):
    """`--parts sync` and `--parts step` leave pieces `rlactors_sync` and `rlactors_step`; the report
    reads the sync figures from the first and the step alone from the second. `--parts bare_mp`
    (vLLM's engine core in its own process) is set beside the in-process `bare` at their largest
    common batch."""
    monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks"))
    import run_all

    pieces = {
        "rlactors": {"grpo_step_s": 3.0, "adapter_sync_p50_ms": 30.0, "adapter_sync_in_step_p50_ms": 20.0},
        "rlactors_sync": {"adapter_sync_p50_ms": 17.7, "adapter_sync_in_step_p50_ms": 8.6},
        "rlactors_step": {"grpo_step_s": 2.5},
        "bare": {"bare_vllm_bs64_lora_logprobs_tok_s": 90.0, "bare_vllm_bs256_lora_logprobs_tok_s": 100.0},
        "bare_mp": {"bare_vllm_bs256_lora_logprobs_tok_s": 80.0},
    }
    monkeypatch.setattr(run_all, "load_pieces", lambda *_: pieces)
    monkeypatch.setattr(run_all, "RESULTS", str(tmp_path))  # the report file stays out of the checkout
    report = run_all.report("tiny", 0.2)
    assert report["adapter_sync_piece"] == "rlactors_sync"
    assert (report["adapter_sync_p50_ms"], report["adapter_sync_in_step_p50_ms"]) == (17.7, 8.6)
    assert (report["grpo_step_s"], report["grpo_step_only_s"]) == (3.0, 2.5)
    assert report["bare_vllm_multiprocess_vs_in_process"] == 0.8
    del pieces["rlactors_sync"]
    assert run_all.report("tiny", 0.2)["adapter_sync_p50_ms"] == 30.0


def test_memory_part_runs_the_lowest_memory_step_into_its_own_folder(tmp_path, monkeypatch):
    """`--parts memory_rlactors`: bench_rlactors.py's step with vLLM asleep and checkpointing, at the
    memory share, its piece in the share's own folder, where the report's memory figures come from."""
    monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks"))
    import run_all

    monkeypatch.setattr(run_all, "PIECES", str(tmp_path))
    ran = []

    def fake_run(cmd, env):  # the part's script writes its piece where BENCH_PIECES says
        ran.append(cmd)
        with open(os.path.join(env["BENCH_PIECES"], "rlactors_step.json"), "w") as f:
            json.dump({"grpo_step_s": 4.0, "peak_memory_gib": 9.0}, f)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(run_all.subprocess, "run", fake_run)
    run_all.run_part("memory_rlactors", "MODEL", smoke=True, memory_gmu=0.2)
    [cmd] = ran
    assert cmd[1].endswith("bench_rlactors.py") and cmd[2:5] == ["--model", "MODEL", "--smoke"]
    assert cmd[5:] == ["--step-only", "--sleep", "--checkpointing", "true", "--gmu", "0.2"]
    assert os.listdir(tmp_path) == ["memory-gmu0.2"]  # never beside the other parts' pieces
    memory = run_all.memory_report(0.2)
    assert (memory["memory_grpo_step_s"], memory["memory_peak_gib"]) == (4.0, 9.0)
    assert memory["memory_gpu_memory_utilization"] == 0.2 and memory["memory_vs_lower_baseline"] is None


def test_rounds_report_pairs_each_round_and_takes_the_median_over_rounds(tmp_path, monkeypatch):
    """`--rounds N` leaves each round's pieces in its own folder; the report pairs each round's
    rlactors step with that round's baselines, and a round without a baseline gives no ratio."""
    monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks"))
    import run_all

    monkeypatch.setattr(run_all, "PIECES", str(tmp_path))
    steps = {1: (2.0, 4.0, 5.0), 2: (3.0, 4.0, None), 10: (2.5, 6.0, 5.0)}  # round 10 sorts after round 2
    for number, (ours, trl, unsloth) in steps.items():
        folder = run_all.round_pieces(number)
        os.makedirs(folder)
        pieces = {
            "rlactors_step": {"grpo_step_s": ours, "rlactors_rollout_bs128_lora_tok_s": 9000.0 * number},
            "trl": {"trl_step_s_median_last4": trl},
            "bare": {"bare_vllm_bs128_lora_logprobs_tok_s": 10000.0 * number},
        }
        if unsloth:
            pieces["unsloth"] = {"unsloth_step_s_median_last4": unsloth}
        for name, values in pieces.items():
            with open(os.path.join(folder, f"{name}.json"), "w") as f:
                json.dump(values, f)
    report = run_all.rounds_report()
    assert [row["round"] for row in report["rounds"]] == [1, 2, 10]
    assert [row["vs_trl"] for row in report["rounds"]] == [0.5, 0.75, 0.417]
    assert [row["vs_unsloth"] for row in report["rounds"]] == [0.4, None, 0.5]
    assert report["rounds_grpo_step_s"] == 2.5 and report["rounds_trl_grpo_step_s"] == 4.0
    assert report["rounds_grpo_step_vs_trl"] == 0.5  # the median of the rounds' ratios, not a ratio of medians
    assert report["rounds_grpo_step_vs_unsloth"] == 0.5  # upper median of [0.4, 0.5]: the benchmarks' median
    # generation at the step's batch against bare vLLM's log-prob sampling of the same round
    assert [row["rollout_vs_bare"] for row in report["rounds"]] == [0.9, 0.9, 0.9]
    assert report["rounds_rollout_vs_bare_vllm"] == 0.9


def test_lora_load_benchmark_runs_both_loads(smollm2):
    """bench_lora_load.py on CPU: the in-place loads keep the installed id, the loads anew each take theirs
    (the script checks both), and it prints both figures."""
    cmd = [sys.executable, "benchmarks/bench_lora_load.py", "--model", smollm2, "--rank", "8", "--rounds", "4"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["device"] == "cpu" and out["adapter_mb"] > 0
    assert out["lora_load_anew_p50_ms"] > 0 and out["lora_load_in_place_p50_ms"] > 0


def test_import_profile_splits_an_import_by_package():
    """bench_imports.py's parts on a small import: every module of `-X importtime` is read, and the
    packages' own times sum to the top-level imports' cumulative times."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from bench_imports import by_package, run

    wall, rows = run("import json, email.parser")
    names = {name.strip() for _, _, name in rows}
    assert {"json", "json.decoder", "email", "email.parser"} <= names and wall > 0
    packages = dict(by_package(rows))
    top_level = sum(total for total, _, name in rows if not name.startswith(" "))
    assert abs(sum(packages.values()) - top_level / 1e6) < 1e-3
    assert packages["json"] > 0 and packages["email"] > 0
