"""How many ATen operations the learner's update dispatches: the host's work per update, which
bounds the update of a small model on a GPU (the main example's: GPU busy 29%, fourth lease).

    python benchmarks/update_ops.py [--layers 30] [--width 64]

The learner (`LearnerWorker`, eager, one micro-batch) on a random Llama of SmolLM2's depth at a
tiny width, so that it runs in seconds on a CPU, with the main example's batch shape
(`profile_step.synthetic_batch`: 8 prompts x 8 samples of 32 tokens, LoRA r=16 on all seven
projections). The op count does
not depend on the width or the device: what a change of rlactors' or PEFT's code does to the host's
work shows here first. Prints the top-level ATen ops of the forward pass (with the loss) and of
the backward pass, by name (the optimizer is one fused AdamW on a GPU), and the time of the
adapter's export for a sync (which depends on the number of tensors, not their width).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median, seconds
from profile_step import synthetic_batch


def aten_ops(fn) -> tuple[object, collections.Counter]:
    """`fn()`'s result and its top-level ATen ops by name (those not called by another ATen op)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    names = [
        event.name
        for event in prof.events()
        if event.name.startswith("aten::") and not (event.cpu_parent and event.cpu_parent.name.startswith("aten::"))
    ]
    return result, collections.Counter(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--tokenizer", default="models/smollm2")
    args = parser.parse_args()
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rlactors.core.config import GRPOConfig
    from rlactors.core.records import BatchTotals
    from rlactors.workers import collective
    from rlactors.workers.learner import LearnerWorker

    folder = tempfile.mkdtemp(prefix="rlactors-update-ops-")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    shape = dict(hidden_size=args.width, intermediate_size=2 * args.width, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), num_hidden_layers=args.layers, **shape)).save_pretrained(
        folder
    )
    tokenizer.save_pretrained(folder)
    config = GRPOConfig(
        model_name=folder,
        output_dir=f"{folder}/run",
        max_prompt_length=96,
        max_completion_length=32,
        lora_r=16,
        lora_alpha=32,
        max_lora_rank=16,
        gradient_checkpointing=False,
        micro_batch_size=64,
        share_prompt_forward=False,  # a row per sample, as on a GPU
    )
    learner = LearnerWorker(config)
    learner.build()
    batch = synthetic_batch(learner, config, tokenizer)  # 8 prompts x 8 samples of 32 tokens
    batch.advantages = torch.randn(batch.size)
    (mb,) = learner._micro_batches(batch)[0]
    totals = BatchTotals.per_mini_batch([batch], batch.size, 1)[0]
    gather = collective.MicroBatchGather(1, learner.device, False)
    learner._micro_loss(mb, None, None, None, totals, gather)[0].backward()  # first-use work, not counted
    learner.optimizer.zero_grad(set_to_none=True)
    (loss, _, _), forward = aten_ops(lambda: learner._micro_loss(mb, None, None, None, totals, gather))
    _, backward = aten_ops(loss.backward)
    print(f"{args.layers} layers, width {args.width}, torch {torch.__version__}")
    for name, ops in (("forward and loss", forward), ("backward", backward)):
        top = ", ".join(f"{op[6:]} {n}" for op, n in ops.most_common(8))
        print(f"{name}: {sum(ops.values())} ATen ops ({top}, ...)")
    learner.export_adapter()  # the adapter's export for a sync: host work too (finding the tensors, joining them)
    export = median([seconds(learner.export_adapter) for _ in range(20)])
    print(f"adapter export: median {1000 * export:.1f} ms of 20 (after one)")


if __name__ == "__main__":
    main()
