"""`ray job submit` against a real local Ray head (`ray start --head`): a job that trains with a reward
module of its own working directory, a job that must fail on a bad config, and `ray job stop`."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

pytestmark = pytest.mark.e2e
BIN = os.path.dirname(sys.executable)
REWARD_MODULE = """
def length_reward(prompts, completions, **kwargs):
    return [min(len(c), 40) / 40 for c in completions]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A real head node on loopback, in its own process group: stopping it touches no other Ray.
    Every port is a free one: Ray's fixed defaults (the dashboard agent's 52365, the client
    server's 10001) are taken when another Ray, such as a test's local cluster, runs here."""
    temp = tmp_path_factory.mktemp("rayhead")
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token"}  # token auth on, as in cluster/ templates
    port, dash = _free_port(), _free_port()
    head = subprocess.Popen(
        [
            f"{BIN}/ray",
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_jobs_api(address, env)
        env["RLACTORS_TEST_GCS"] = f"127.0.0.1:{port}"
        yield address, env
    finally:
        # every process of the head gets SIGTERM at once; `ray start --block` itself then takes
        # about 30 s to exit (its graceful shutdown of processes already gone), so it is killed
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def _wait_for_jobs_api(address, env):
    deadline = time.time() + 60
    while time.time() < deadline:
        out = subprocess.run([f"{BIN}/ray", "job", "list", "--address", address], env=env, capture_output=True)
        if out.returncode == 0:
            return
        time.sleep(1)
    raise TimeoutError(f"Ray jobs API at {address} did not come up")


def _job_dir(tmp_path, tiny_llama, **overrides):
    work = tmp_path / "job"
    work.mkdir()
    (work / "my_rewards.py").write_text(REWARD_MODULE)
    rows = [{"prompt": f"Count to {i}:"} for i in range(8)]
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = dict(
        model_name=tiny_llama,
        dataset="data.jsonl",
        reward_funcs=["my_rewards:length_reward"],
        max_seq_length=128,
        max_prompt_length=32,
        max_completion_length=8,
        max_lora_rank=16,
        lora_r=8,
        num_generations=2,
        prompts_per_step=2,
        max_steps=2,
        save_steps=1,
        gradient_checkpointing=False,
        output_dir=str(tmp_path / "out"),
        progress_bar=False,
        engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": 256 * 2**20},
    )
    config.update(overrides)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return work


def _submit(address, env, work, *flags):
    """`ray job submit`, asked again while the head's job agent is still starting (`ray job list`
    answers before the agent that takes submissions is up, on a loaded machine by seconds)."""
    cmd = [
        f"{BIN}/ray",
        "job",
        "submit",
        *flags,
        "--address",
        address,
        "--working-dir",
        str(work),
        "--",
        sys.executable,
        "-m",
        "rlactors",
        "train",
        "config.yaml",
    ]
    deadline = time.time() + 120
    while True:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent to submit job" not in done.stdout + done.stderr or time.time() > deadline:
            return done
        time.sleep(2)


def test_job_trains_with_its_own_reward_module(ray_head, tiny_llama, tmp_path):
    address, env = ray_head
    done = _submit(address, env, _job_dir(tmp_path, tiny_llama))
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-3000:]
    assert "succeeded" in logs and "step 2: reward=" in logs, logs[-4000:]
    with open(tmp_path / "out" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2] and "rewards/length_reward/mean" in rows[0]
    assert sorted(os.listdir(tmp_path / "out" / "final")) == ["adapter_config.json", "adapter_model.safetensors"]
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", logs).group(0)
    shown = subprocess.run(
        [f"{BIN}/ray", "job", "logs", job_id, "--address", address], env=env, capture_output=True, text=True
    )
    job_logs = shown.stdout + shown.stderr
    assert "step 1: reward=" in job_logs


def test_bad_config_job_fails_with_the_error_in_its_logs(ray_head, tiny_llama, tmp_path):
    address, env = ray_head
    done = _submit(address, env, _job_dir(tmp_path, tiny_llama, num_generations=1))
    logs = done.stdout + done.stderr
    assert done.returncode != 0 and "failed" in logs.lower()
    assert "num_generations=1: GRPO's group baseline needs at least 2" in logs


CLUSTER_STATE = """
import json, os, ray
from ray.util.placement_group import placement_group_table
from ray.util.state import list_actors
ray.init(address=os.environ["RLACTORS_TEST_GCS"], log_to_driver=False)
print(json.dumps({
    "actors": [a.name for a in list_actors(address=os.environ["RLACTORS_TEST_DASH"],
                                           filters=[("state", "=", "ALIVE")])],
    "groups": [g["state"] for g in placement_group_table().values()],
    "free_cpu": ray.available_resources().get("CPU", 0), "cpu": ray.cluster_resources().get("CPU", 0),
}))
"""


def _cluster_state(address, env):
    out = subprocess.run(
        [sys.executable, "-c", CLUSTER_STATE],
        env={**env, "RLACTORS_TEST_DASH": address},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_job_stop_frees_actors_placement_groups_and_cpus(ray_head, tiny_llama, tmp_path):
    address, env = ray_head
    work = _job_dir(tmp_path, tiny_llama, max_steps=1000, save_steps=0)
    submitted = _submit(address, env, work, "--no-wait")
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", submitted.stdout + submitted.stderr).group(0)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until it trains
        shown = subprocess.run(
            [f"{BIN}/ray", "job", "logs", job_id, "--address", address], env=env, capture_output=True, text=True
        )
        if "step 1: reward=" in shown.stdout:
            break
        time.sleep(3)
    assert "step 1: reward=" in shown.stdout, shown.stdout[-3000:]
    assert {"rlactors/rollout-0", "rlactors/learner-0"} <= set(_cluster_state(address, env)["actors"])
    stopped = subprocess.run(
        [f"{BIN}/ray", "job", "stop", job_id, "--address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    deadline = time.time() + 60
    while time.time() < deadline:
        state = _cluster_state(address, env)
        if not state["actors"] and state["free_cpu"] == state["cpu"]:
            break
        time.sleep(2)
    assert not state["actors"] and state["free_cpu"] == state["cpu"], state
    assert all(group == "REMOVED" for group in state["groups"]), state
