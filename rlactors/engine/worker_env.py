"""What a rollout worker's process sets up around vLLM without importing it: where vLLM's log
lines go, and where Triton keeps the GPU kernels it builds for vLLM."""

from __future__ import annotations

import glob
import os


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
