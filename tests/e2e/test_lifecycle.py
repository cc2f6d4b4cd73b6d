"""A local run binds to loopback, keeps secrets out of its run folder, and leaves nothing behind
when its driver is killed."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

pytestmark = pytest.mark.e2e
SECRET = "hf_do_not_log_this_0123456789"
LISTEN_PROBE = """
import json, psutil
from rlactors.trainer.grpo_trainer import GRPOTrainer
GRPOTrainer.__new__(GRPOTrainer)._init_ray()
me = psutil.Process()
procs = [me] + me.children(recursive=True)
listening = sorted({(c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN})
print("LISTEN " + json.dumps(listening))
"""
DASHBOARD_JOBS_CLIENT_PORTS = {8265, 10001}


def test_local_ray_opens_no_dashboard_jobs_or_client_port():
    """Ray's own gRPC ports are guarded by its token authentication (on by default); what a
    browser or `ray job submit` could reach, the dashboard, jobs API and client server, is not
    started by a local rlactors run at all."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", LISTEN_PROBE], capture_output=True, text=True, env=env, timeout=300)
    line = next(line for line in done.stdout.splitlines() if line.startswith("LISTEN "))
    listening = [tuple(pair) for pair in json.loads(line[len("LISTEN ") :])]
    assert listening, "the probe saw no Ray process listening at all"
    assert not [pair for pair in listening if pair[1] in DASHBOARD_JOBS_CLIENT_PORTS], listening
    assert "Token authentication is enabled" in done.stderr


def _config(tmp_path, tiny_llama, steps):
    rows = [{"prompt": f"Say {i}."} for i in range(16)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = dict(
        model_name=tiny_llama,
        dataset=str(tmp_path / "data.jsonl"),
        reward_funcs=["rlactors.reward_funcs:number_only"],
        max_seq_length=128,
        max_prompt_length=32,
        max_completion_length=8,
        max_lora_rank=16,
        lora_r=8,
        num_generations=2,
        prompts_per_step=2,
        max_steps=steps,
        save_steps=0,
        gradient_checkpointing=False,
        progress_bar=False,
        output_dir=str(tmp_path / "run"),
        engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": 2**28},
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_driver_killed_leaves_no_actors_and_secrets_stay_out(tmp_path, tiny_llama):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_TOKEN=SECRET, WANDB_API_KEY=SECRET)
    driver = subprocess.Popen(
        [sys.executable, "-m", "rlactors", "train", _config(tmp_path, tiny_llama, 200)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    pids, deadline = [], time.time() + 300
    for line in driver.stdout:
        found = re.search(r"rollout workers on pids \[(\d+)\], learners on pids \[(\d+)\]", line)
        if found:
            pids = [int(found.group(1)), int(found.group(2))]
        if pids and "step 1: reward=" in line:
            break
        assert time.time() < deadline, "the run did not reach step 1"
    assert pids and all(psutil.pid_exists(p) for p in pids)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.time() + 60
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(1)
    assert not any(_alive(p) for p in pids), "actors outlived their driver"
    for root, _, files in os.walk(tmp_path / "run"):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert SECRET.encode() not in f.read(), os.path.join(root, name)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
