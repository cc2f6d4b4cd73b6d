"""What `import vllm` costs in a rollout worker's process, by module: Python's `-X importtime` of
`from vllm import LLM` (what `vllm_engine.import_vllm` runs), in fresh processes, run twice (the
second with every cache the first left), beside `import torch` alone and torch's CUDA start.

    python benchmarks/bench_imports.py [--top 25]

Prints each run's wall time; for the last `from vllm import LLM`, the import time of each
top-level package (its modules' own times summed); where a local `ray.init()` spends its time (the
waits for the dashboard's API server and the raylet); and saves the piece `imports`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import save_piece, versions

RAY_INIT = "ray.init(address='local', _node_ip_address='127.0.0.1', include_dashboard=False{})"  # as the trainer's
NO_PRESTART = ", _system_config={'prestart_worker_first_driver': False}"
STATEMENTS = {
    "torch": "import torch",
    "torch_cuda": "import torch; torch.cuda.is_available() and torch.zeros(1, device='cuda')",
    "vllm": "from vllm import LLM",
    # what the driver and the workers import before vLLM, and a local Ray's start and stop
    "trainer": "from rlactors.trainer.grpo_trainer import GRPOTrainer",
    "workers": "import rlactors.workers.rollout, rlactors.workers.learner",
    "ray": "import ray",
    "ray_start": f"import ray; {RAY_INIT.format('')}; ray.shutdown()",
    # without the idle workers Ray starts for the first driver (one per CPU) beside the run's own
    "ray_start_no_prestart": f"import ray; {RAY_INIT.format(NO_PRESTART)}; ray.shutdown()",
}


def run(statement: str) -> tuple[float, list[tuple[int, int, str]]]:
    """Wall seconds of a fresh process running `statement`, and its (cumulative us, self us, module
    indented two spaces a level)."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"{statement!r} failed: {out.stderr[-2000:]}")
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, total, name = line[len("import time:") :].split("|", 2)
        rows.append((int(total), int(own), name[1:]))  # nested modules keep their indent
    return wall, rows


RAY_INIT_PARTS = {  # Ray's own functions that a local `ray.init()` spends its time in
    "ray.init": "worker.py:init",
    "the node's processes started": "node.py:__init__",
    "GCS": "node.py:start_gcs_server",
    "dashboard's API server, waited for": "services.py:start_api_server",
    "raylet started": "node.py:start_raylet",
    "raylet registered, waited for": "services.py:get_node",
    "driver connected": "worker.py:connect",
}


def ray_init_parts() -> dict[str, float]:
    """Seconds of each of `RAY_INIT_PARTS` in a fresh process's local `ray.init()` (cProfile's
    cumulative times: the waits for Ray's processes are most of it)."""
    import pstats
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        profile, script = os.path.join(folder, "init.prof"), os.path.join(folder, "init.py")
        with open(script, "w") as f:
            f.write(f"import ray\n{RAY_INIT.format('')}\n")
        subprocess.run([sys.executable, "-m", "cProfile", "-o", profile, script], check=True, capture_output=True)
        stats = pstats.Stats(profile).stats  # {(file, line, function): (calls, ..., cumulative, callers)}
    seconds = {}
    for part, where in RAY_INIT_PARTS.items():
        module, function = where.split(":")
        found = [
            v[3] for (file, _, name), v in stats.items() if file.endswith("ray/_private/" + module) and name == function
        ]
        seconds[part] = round(max(found, default=0.0), 3)
    return seconds


def by_package(rows: list[tuple[int, int, str]]) -> list[tuple[str, float]]:
    """Each top-level package's own import time (its modules' self times summed), largest first:
    an exact split of the import, where cumulative times nest."""
    seconds: dict[str, float] = {}
    for _, own, name in rows:
        package = name.strip().split(".")[0]
        seconds[package] = seconds.get(package, 0.0) + own / 1e6
    return sorted(seconds.items(), key=lambda item: -item[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    walls: dict[str, list[float]] = {}
    rows: list[tuple[int, int, str]] = []
    order = ("vllm", "vllm", "torch", "torch_cuda", "trainer", "workers", "ray")
    for name in order + ("ray_start", "ray_start_no_prestart") * 2:
        wall, found = run(STATEMENTS[name])
        walls.setdefault(name, []).append(round(wall, 2))
        rows = found if name == "vllm" else rows
        print(f"{name:<12} {wall:6.2f} s", flush=True)
    parts = ray_init_parts()
    print("\na local ray.init(), by part (cProfile):")
    for part, took in parts.items():
        print(f"{took:>8.2f}  {part}")
    packages = by_package(rows)[: args.top]
    print(f"\n{'seconds':>8}  package (the second `from vllm import LLM`; {len(rows)} modules)")
    for package, own in packages:
        print(f"{own:>8.2f}  {package}")
    save_piece(
        "imports",
        {
            "versions": versions(),
            "wall_s": walls,
            "by_package_s": {package: round(own, 3) for package, own in packages},
            "ray_init_parts_s": parts,
        },
    )


if __name__ == "__main__":
    main()
