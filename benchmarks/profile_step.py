"""Where the GRPO step's time goes on one GPU: a rollout worker and a learner in this one process
(no Ray), the workload of `bench_rlactors.py`, timed and profiled with torch's profiler.

    python benchmarks/profile_step.py --model DIR [--smoke] [--update-only] [--sleep] [--example]

`--example`: the README's main example (`examples/arithmetic_grpo.yaml`, the embedded SmolLM2 at
DIR) instead of the 1.07B benchmark shape, and its update also with the whole batch as one
micro-batch (piece `profile_example`).

Prints and saves (piece `profile`):
- rollout, in-process: vLLM's `generate` with a rollout worker's sampling parameters, beside the
  worker's `generate` (the same call plus log-prob extraction, one batch decode and packing into a
  `RolloutBatch`), on the same engine: what rlactors adds outside Ray;
- the GPU's busy share during generation and during the update (kernel time over wall time) and
  the update's kernel time by kind (matmul, attention, other), which says whether a phase is
  bound by the GPU or by the host;
- the update with LoRA matmuls in bf16 (autocast, the learner's default for a bf16 base) beside
  PEFT's float32 LoRA math (its default), same batch;
- GPU memory by holder: the engine (weights, KV cache, CUDA graphs), the learner at rest (weights,
  adapter, AdamW) and what the update adds at its peak (activations, logits, gradients), allocated
  and held by torch's caching allocator; and the update's time and memory with activation
  checkpointing (`gradient_checkpointing` True and "unsloth"), then with the decoder layers
  compiled (`torch_compile`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import TYPE_CHECKING

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_rlactors import config_for
from common import REPEATS, median, prompts, save_piece, seconds

if TYPE_CHECKING:
    from rlactors.core.records import RolloutBatch

KINDS = (
    ("matmul", ("gemm", "cutlass", "nvjet", "sm90_xmma", "cublas", "matmul", "addmm", "mm")),
    ("attention", ("flash", "fmha", "attention", "attn")),
)


def timed(fn, repeats: int = REPEATS) -> tuple[float, object]:
    """Median seconds of `repeats` calls after an untimed one; and the last call's result."""
    results = [fn()]
    times = [seconds(lambda: results.append(fn())) for _ in range(repeats)]
    return median(times), results[-1]


def kernel_summary(fn) -> dict:
    """Runs `fn` once under torch's profiler: wall seconds, GPU kernel seconds and their share of the
    wall time, kernel seconds by kind and the five longest kernels. Without CUDA: wall time only."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        wall = seconds(fn)
    by_name: dict[str, float] = {}
    for event in prof.key_averages():
        kernel_s = getattr(event, "self_device_time_total", 0.0) / 1e6
        if kernel_s > 0 and event.device_type.name == "CUDA":
            by_name[event.key] = by_name.get(event.key, 0.0) + kernel_s
    kinds = dict.fromkeys([k for k, _ in KINDS] + ["other"], 0.0)
    for name, kernel_s in by_name.items():
        low = name.lower()
        kind = next((k for k, words in KINDS if any(w in low for w in words)), "other")
        kinds[kind] += kernel_s
    busy = sum(by_name.values())
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:5]
    return {
        "wall_s": round(wall, 3),
        "kernel_s": round(busy, 3),
        "gpu_busy_share": round(busy / wall, 3),
        "kernel_s_by_kind": {k: round(v, 3) for k, v in kinds.items()},
        "top_kernels": [(name[:90], round(s, 4)) for name, s in top],
    }


def used_gib() -> float | None:
    """Device-wide GPU memory in use (every process), GiB; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return round((total - free) / 2**30, 2)


def update_memory(update) -> dict:
    """What one update adds at its peak to what this process's torch holds before it, GiB."""
    import torch

    if not torch.cuda.is_available():
        return {}
    torch.cuda.synchronize()
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    update()
    torch.cuda.synchronize()
    return {
        "update_peak_allocated_extra": round((torch.cuda.max_memory_allocated() - allocated) / 2**30, 2),
        "update_reserved_extra": round((torch.cuda.max_memory_reserved() - reserved) / 2**30, 2),
    }


def fp32_lora_math(learner) -> contextlib.AbstractContextManager:
    """PEFT's default inside this block: inputs upcast to the float32 LoRA weights, no autocast."""

    @contextlib.contextmanager
    def block():
        layers = [m for m in learner.model.modules() if hasattr(m, "cast_input_dtype_enabled")]
        before = learner.mixed_precision
        for m in layers:
            m.cast_input_dtype_enabled = True
        learner.mixed_precision = contextlib.nullcontext
        try:
            yield
        finally:
            learner.mixed_precision = before
            for m in layers:
                m.cast_input_dtype_enabled = False

    return block()


def checkpointed_update(learner, mode: bool | str, update) -> dict:
    """The update's time and memory with `gradient_checkpointing` set to `mode` (then off again)."""
    from rlactors.loader.fast_language_model import _set_gradient_checkpointing

    _set_gradient_checkpointing(learner.model, mode)
    try:
        return {"update_s": round(timed(update)[0], 3), **update_memory(update)}
    finally:
        learner.model.gradient_checkpointing_disable()


def synthetic_batch(learner, config, tokenizer) -> RolloutBatch:
    """The step's batch shape without an engine: random completions of full length, with the
    learner's own log-probs as the behaviour policy's (for `--update-only`)."""
    import torch

    from rlactors.core.records import RolloutBatch

    group, length = config.num_generations, config.max_completion_length
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompt = tokenizer(prompts(config.prompts_per_step), padding=True, padding_side="left", return_tensors="pt")
    rows = prompt.input_ids.shape[0] * group
    completion = torch.randint(10, len(tokenizer), (rows, length))
    batch = RolloutBatch(
        prompt_ids=prompt.input_ids.repeat_interleave(group, 0),
        prompt_mask=prompt.attention_mask.repeat_interleave(group, 0),
        completion_ids=completion,
        completion_mask=torch.ones_like(completion),
        behaviour_logprobs=torch.zeros(rows, length),
        prompt_index=torch.arange(rows) // group,
        sample_index=torch.arange(rows) % group,
        truncated=torch.ones(rows, dtype=torch.bool),
        completions=[""] * rows,
        adapter_version=learner.version,
        num_generations=group,
    )
    with torch.no_grad(), learner.mixed_precision():
        batch.behaviour_logprobs = torch.cat(
            [learner._forward_logprobs(batch.rows(i, i + 8))[1].cpu() for i in range(0, rows, 8)]
        )
    return batch


def profile_rollout(rollout, learner, config, out: dict) -> tuple[RolloutBatch, list]:
    """vLLM's `generate` alone, then the rollout worker's, same engine and process; their batch
    and the prompts' token ids."""
    from rlactors.engine import vllm_engine as engine

    rollout.load_adapter(learner.export_adapter())
    tokenizer = rollout._engine.get_tokenizer()
    ids = [tokenizer(p).input_ids for p in prompts(config.prompts_per_step)]
    fields = dict(
        n=config.num_generations,
        max_tokens=config.max_completion_length,
        temperature=config.temperature,
        top_p=config.top_p,
        logprobs=0,
        **config.generation_kwargs,
    )
    params = engine.sampling_params(
        **fields, **{k: v for k, v in (("flat_logprobs", True), ("detokenize", False)) if engine._has_field(k)}
    )
    vllm_s, _ = timed(lambda: engine.generate(rollout._engine, ids, params, rollout._request))
    worker_s, batch = timed(lambda: rollout.generate(ids, learner.version))
    tokens = float(batch.completion_mask.sum())
    out.update(
        rollout_vllm_generate_s=round(vllm_s, 3),
        rollout_worker_generate_s=round(worker_s, 3),
        rollout_worker_vs_vllm=round(vllm_s / worker_s, 3),
        rollout_tok_s=round(tokens / worker_s, 1),
    )
    out["generate_profile"] = kernel_summary(lambda: rollout.generate(ids, learner.version))
    print(
        f"\nrollout ({batch.size} x {config.max_completion_length} tokens): vLLM generate {vllm_s:.3f} s, "
        f"rollout worker {worker_s:.3f} s ({out['rollout_worker_vs_vllm']}x); "
        f"GPU busy {out['generate_profile']['gpu_busy_share']}"
    )
    return batch, ids


def profile_wake(rollout, learner, ids: list, out: dict) -> None:
    """With `--sleep`: the worker's `generate` right after a sleep and wake-up (vLLM level 1), the
    wake-up's own time, and that generation's GPU busy share, beside the awake figures above."""
    wakes, generations = [], []
    for _ in range(REPEATS):
        rollout.sleep()
        wakes.append(seconds(rollout.ready))
        generations.append(seconds(lambda: rollout.generate(ids, learner.version)))  # the first one after waking
    rollout.sleep()
    rollout.ready()
    out.update(
        wake_s=round(median(wakes), 3),
        rollout_worker_generate_after_wake_s=round(median(generations), 3),
        generate_after_wake_profile=kernel_summary(lambda: rollout.generate(ids, learner.version)),
    )
    busy = out["generate_after_wake_profile"]["gpu_busy_share"]
    print(
        f"after a sleep: wake-up {out['wake_s']} s, then the worker's generate "
        f"{out['rollout_worker_generate_after_wake_s']} s; GPU busy {busy}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--gmu", type=float, default=0.2)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--example", action="store_true", help="the main example's config and model (DIR)")
    parser.add_argument(
        "--update-only",
        action="store_true",
        help="no engine: the learner's update on a synthetic batch of the step's shape (piece profile_update)",
    )
    parser.add_argument(
        "--sleep",
        action="store_true",
        help="vllm_enable_sleep_mode: also time generation right after a sleep and wake-up",
    )
    args = parser.parse_args()
    import torch

    from rlactors.loader.fast_language_model import compile_layers
    from rlactors.workers.learner import LearnerWorker
    from rlactors.workers.rollout import RolloutWorker

    if args.example:
        from rlactors.core.config_file import load_config

        sets = [f"model_name={args.model}", "save_steps=0", "output_dir=/tmp/rlactors-bench-run", "max_steps=1"]
        sets.append("max_logprob_mismatch=1000")  # the synthetic batch's log-probs drift from the trained adapter
        config = load_config(os.path.join(os.path.dirname(HERE), "examples", "arithmetic_grpo.yaml"), sets)
    else:
        config = config_for(
            args.model, args.smoke, 1, args.gmu, checkpointing=False, micro=args.micro_batch, sleep=args.sleep
        )
    rollout, learner = (None if args.update_only else RolloutWorker(config)), LearnerWorker(config)
    memory = {"before": used_gib()}
    if rollout is not None:
        rollout.build()
        memory["with_engine"] = used_gib()
    learner.build()
    memory["with_learner"] = used_gib()
    out: dict = {
        "rows": config.samples_per_step,
        "completion_tokens": config.max_completion_length,
        "micro_batch_size": config.micro_batch_size,
    }
    if rollout is not None:
        batch, ids = profile_rollout(rollout, learner, config, out)
        if args.sleep:
            profile_wake(rollout, learner, ids, out)
    else:
        from transformers import AutoTokenizer

        batch = synthetic_batch(learner, config, AutoTokenizer.from_pretrained(config.model_name))

    # Update: the learner's default (bf16 LoRA matmuls for a bf16 base), then PEFT's fp32 LoRA math.
    batch.advantages = torch.randn(batch.size) * (1e-3 if args.smoke else 1.0)

    def update():
        batch.adapter_version = learner.version
        return learner.update(batch, step=learner.version + 1)

    out["update_s"] = round(timed(update)[0], 3)
    memory.update(update_memory(update), after_updates=used_gib())
    out["memory_gib"] = memory
    out["update_profile"] = kernel_summary(update)
    with fp32_lora_math(learner):
        out["update_fp32_lora_s"] = round(timed(update)[0], 3)
    out["update_vs_fp32_lora"] = round(out["update_s"] / out["update_fp32_lora_s"], 3)
    if args.example:  # the whole batch in one forward and backward pass, beside the example's micro-batches
        configured, learner.config = learner.config, learner.config.model_copy(update={"micro_batch_size": batch.size})
        out["update_one_micro_batch_s"] = round(timed(update)[0], 3)
        out["update_one_micro_batch_profile"] = kernel_summary(update)
        learner.config = configured
    out["update_by_checkpointing"] = {
        str(mode): checkpointed_update(learner, mode, update) for mode in (True, "unsloth")
    }
    # Last, as it stays on: the decoder layers compiled (`torch_compile`); timed() leaves the compiling call out.
    out["compiled_layers"] = compile_layers(learner.model)
    out["update_compiled_s"] = round(timed(update)[0], 3)
    out["update_compiled_memory"] = update_memory(update)
    out["update_compiled_vs_eager"] = round(out["update_compiled_s"] / out["update_s"], 3)
    piece = "profile_example" if args.example else "profile_update" if args.update_only else "profile"
    save_piece(piece, out)
    print(
        f"update: {out['update_s']} s (bf16 LoRA matmuls) vs {out['update_fp32_lora_s']} s (fp32 LoRA) "
        f"= {out['update_vs_fp32_lora']}x; GPU busy {out['update_profile']['gpu_busy_share']}, "
        f"kernel s by kind {out['update_profile']['kernel_s_by_kind']}"
    )
    if args.example:
        print(
            f"update as one micro-batch of {batch.size}: {out['update_one_micro_batch_s']} s, "
            f"GPU busy {out['update_one_micro_batch_profile']['gpu_busy_share']}"
        )
    print(f"GPU memory (GiB, device-wide unless 'extra'): {memory}")
    print(f"update with activation checkpointing: {out['update_by_checkpointing']}")
    print(
        f"update with compiled decoder layers: {out['update_compiled_s']} s "
        f"({out['update_compiled_vs_eager']}x eager), memory {out['update_compiled_memory']}"
    )


if __name__ == "__main__":
    main()
