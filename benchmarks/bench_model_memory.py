"""Peak memory of `GRPOTrainer(model=loader_model)` beside the config-only path, in one run.

    python benchmarks/bench_model_memory.py [--model models/smollm2] [--steps 2]

Each variant runs in a fresh process (its own local Ray) while this one samples memory every 0.2 s:
on CPU the machine's used RAM above what was used before the variant started (every process: the
driver, Ray's, the workers'), on a GPU the device-wide used GPU memory as well.
- config: `GRPOTrainer(GRPOConfig(model_name=...))`, the rollout and learner workers as Ray actors;
- model: the user's script loads the model with `FastLanguageModel` (vLLM engine attached), adds
  LoRA, and passes it as `GRPOTrainer(model=model, args=...)`: the trainer reuses that model and
  engine in the driver process.
Prints both peaks and model / config (target: at most 1.1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import PeakMemory, gpu_name, save_piece, versions

STEPS = 2


def used_ram() -> int:
    import psutil

    memory = psutil.virtual_memory()
    return memory.total - memory.available


class PeakRAM:
    def __init__(self) -> None:
        self.base = used_ram()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, used_ram() - self.base)
            time.sleep(0.2)

    def __enter__(self) -> PeakRAM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def settings(model: str, steps: int, output_dir: str, eager: bool) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    engine = {"enforce_eager": True} if eager or not cuda else {}
    if not cuda:
        engine["kv_cache_memory_bytes"] = 2**30
    return dict(
        model=model,
        max_seq_length=256,
        share=0.3 if cuda else 0.25,
        rank=16,
        steps=steps,
        output_dir=output_dir,
        engine_kwargs=engine,
    )


def rows() -> list[dict]:
    return [
        {"prompt": [{"role": "user", "content": f"What is {i} + {2 * i}? Reply with only the number."}]}
        for i in range(64)
    ]


def length_reward(prompts, completions, **_):
    return [-len(c[0]["content"]) / 32 for c in completions]


def trl_args(s: dict, **extra) -> dict:
    return dict(
        learning_rate=1e-4,
        num_generations=8,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=4,
        max_prompt_length=64,
        max_completion_length=32,
        max_steps=s["steps"],
        save_steps=0,
        report_to="none",
        output_dir=s["output_dir"],
        progress_bar=False,
        **extra,
    )


def run_variant(variant: str, s: dict) -> None:
    """One variant, in this (child) process."""
    from rlactors import FastLanguageModel, GRPOConfig, GRPOTrainer

    if variant == "config":
        config = GRPOConfig(
            model_name=s["model"],
            max_seq_length=s["max_seq_length"],
            gpu_memory_utilization=s["share"],
            max_lora_rank=s["rank"],
            lora_r=s["rank"],
            engine_kwargs=s["engine_kwargs"],
            **trl_args(s),
        )
        GRPOTrainer(args=config, reward_funcs=length_reward, train_dataset=rows()).train()
        return
    model, tokenizer = FastLanguageModel.from_pretrained(
        s["model"],
        max_seq_length=s["max_seq_length"],
        load_in_4bit=False,
        fast_inference=True,
        gpu_memory_utilization=s["share"],
        max_lora_rank=s["rank"],
        **s["engine_kwargs"],
    )
    model = FastLanguageModel.get_peft_model(model, r=s["rank"], lora_alpha=32, use_gradient_checkpointing=True)
    GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=length_reward,
        args=GRPOConfig(**trl_args(s)),
        train_dataset=rows(),
    ).train()


def measure(variant: str, s: dict) -> dict:
    import torch

    started = time.perf_counter()
    with PeakRAM() as ram, PeakMemory() as gpu:
        done = subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--settings", json.dumps(s)],
            capture_output=True,
            text=True,
        )
    if done.returncode:
        raise SystemExit(f"variant {variant} failed:\n{done.stderr[-3000:]}")
    out = {"peak_ram_gib": round(ram.peak / 2**30, 2), "seconds": round(time.perf_counter() - started, 1)}
    if torch.cuda.is_available():
        out["peak_gpu_gib"] = gpu.peak_gib
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/smollm2")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--output-dir", default="/tmp/rlactors-bench-model-memory")
    parser.add_argument("--eager", action="store_true", help="vLLM without CUDA graphs (faster start on a GPU)")
    parser.add_argument("--variant", choices=["config", "model"])
    parser.add_argument("--settings")
    args = parser.parse_args()
    if args.variant:
        run_variant(args.variant, json.loads(args.settings))
        return
    s = settings(os.path.abspath(args.model), args.steps, args.output_dir, args.eager)
    results = {variant: measure(variant, s) for variant in ("config", "model")}
    keys = [k for k in ("peak_ram_gib", "peak_gpu_gib") if k in results["config"]]
    ratios = {f"model_vs_config_{k}": round(results["model"][k] / results["config"][k], 3) for k in keys}
    save_piece("model_memory", {"device": gpu_name(), **results, **ratios, "settings": s, "versions": versions()})
    for k, v in ratios.items():
        print(f"{k}: {v} (target <= 1.1)")


if __name__ == "__main__":
    main()
