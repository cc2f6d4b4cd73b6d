"""What `import vllm` costs in a rollout worker's process, by module: Python's `-X importtime` of
`from vllm import LLM` (what `vllm_engine.import_vllm` runs), in fresh processes, run twice (the
second with every cache the first left), beside `import torch` alone and torch's CUDA start.

    python benchmarks/bench_imports.py [--top 25]

Prints each run's wall time and, for the last `from vllm import LLM`, the import time of each
top-level package (its modules' own times summed), and saves the piece `imports`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import save_piece, versions

STATEMENTS = {
    "torch": "import torch",
    "torch_cuda": "import torch; torch.cuda.is_available() and torch.zeros(1, device='cuda')",
    "vllm": "from vllm import LLM",
    # what the driver and the workers import before vLLM, and a local Ray's start and stop
    "trainer": "from rlactors.trainer.grpo_trainer import GRPOTrainer",
    "workers": "import rlactors.workers.rollout, rlactors.workers.learner",
    "ray_start": "import ray; ray.init(address='local', _node_ip_address='127.0.0.1', include_dashboard=False); "
    "ray.shutdown()",
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
    for name in ("vllm", "vllm", "torch", "torch_cuda", "trainer", "workers", "ray_start", "ray_start"):
        wall, found = run(STATEMENTS[name])
        walls.setdefault(name, []).append(round(wall, 2))
        rows = found if name == "vllm" else rows
        print(f"{name:<12} {wall:6.2f} s", flush=True)
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
        },
    )


if __name__ == "__main__":
    main()
