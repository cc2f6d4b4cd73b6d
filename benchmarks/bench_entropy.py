"""What TRL's `entropy` metric costs the learner: the log-prob pass over the vocabulary
(`algorithm.selective_logprobs`) against the same pass that also sums each token's entropy
(`algorithm.logprobs_and_entropy`), forward and backward, alternated, at the main example's shape
and the 1B benchmark's (SmolLM2's 49,152-token vocabulary).

    python benchmarks/bench_entropy.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from common import gpu_name, median, save_piece, seconds, versions

from rlactors.core import algorithm

VOCAB = 49_152
SHAPES = {"example (64 x 32)": (64, 32), "1B step, a micro-batch (32 x 256)": (32, 256)}


def pass_of(fn, logits: torch.Tensor, ids: torch.Tensor) -> float:
    def run() -> None:
        x = logits.detach().requires_grad_(True)
        out = fn(x, ids)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    return seconds(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    variants = {
        "log-probs": lambda x, ids: algorithm.selective_logprobs(x, ids, 1.0),
        "log-probs and entropy": lambda x, ids: algorithm.logprobs_and_entropy(x, ids, 1.0),
    }
    results = {}
    print(f"{'shape':<36} {'log-probs ms':>12} {'with entropy ms':>16} {'ratio':>6}")
    for name, (rows, length) in SHAPES.items():
        logits = torch.randn(rows, length, VOCAB, device=device, dtype=dtype)
        ids = torch.randint(0, VOCAB, (rows, length), device=device)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeats + 1):  # the first round warms up
            for variant, fn in variants.items():
                times[variant].append(pass_of(fn, logits, ids))
        ms = {v: 1000 * median(t[1:]) for v, t in times.items()}
        results[name] = ms
        print(
            f"{name:<36} {ms['log-probs']:>12.2f} {ms['log-probs and entropy']:>16.2f} "
            f"{ms['log-probs and entropy'] / ms['log-probs']:>6.2f}"
        )
    save_piece("entropy", {"device": gpu_name(), "versions": versions(), "ms": results})


if __name__ == "__main__":
    main()
