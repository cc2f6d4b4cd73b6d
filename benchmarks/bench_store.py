"""What the object-store adapter path costs without a GPU: an actor returns a `LoRAAdapter` of a given
size (stored once in Ray's object store), another actor reads it. Splits the learner's export phase
of `bench_rlactors.py` into making the buffer and storing it.

    python benchmarks/bench_store.py [--mb 86] [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import ray
import torch

from rlactors.core.adapter import LoRAAdapter, unflatten

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median


@ray.remote
class Learner:
    def __init__(self, numel: int, layout: list):
        self.flat = torch.randn(numel).to(torch.bfloat16)
        self.layout = layout

    def export(self, version: int) -> tuple[float, LoRAAdapter]:
        start = time.perf_counter()
        flat = self.flat.clone()  # stands in for the join and device-to-host copy
        made = time.perf_counter() - start
        return made, LoRAAdapter(version, unflatten(flat, self.layout), {"r": 64}, flat=flat)


@ray.remote
class Rollout:
    def load(self, adapter: LoRAAdapter) -> int:
        return adapter.flat.numel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=86.0)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    per_tensor = 64 * 2048
    layout = [(f"t{i}.lora_A.weight", (64, 2048)) for i in range(int(args.mb * 2**20 / 2 / per_tensor))]
    learner, rollout = Learner.remote(per_tensor * len(layout), layout), Rollout.remote()
    print(f"{'round':>5} {'make ms':>8} {'make+store ms':>14} {'read ms':>8}")
    rows = []
    for i in range(args.rounds):
        start = time.perf_counter()
        made_ref, adapter_ref = learner.export.options(num_returns=2).remote(i)
        ray.wait([adapter_ref], fetch_local=False)
        stored = time.perf_counter() - start
        ray.get(rollout.load.remote(adapter_ref))
        read = time.perf_counter() - start - stored
        rows.append((ray.get(made_ref) * 1e3, stored * 1e3, read * 1e3))
        print(f"{i:>5} {rows[-1][0]:>8.1f} {rows[-1][1]:>14.1f} {rows[-1][2]:>8.1f}")
    made, stored, read = (median([r[k] for r in rows[1:]]) for k in range(3))
    print(
        f"median of rounds 2-{args.rounds}: make {made:.1f} ms, store {stored - made:.1f} ms, read {read:.1f} ms "
        f"for {args.mb:g} MB"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
