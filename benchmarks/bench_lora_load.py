"""Loading a new adapter version into vLLM from memory: copied into the slots of the version before
(rlactors' in-place update) beside vLLM building it anew (`LoRAModel.from_lora_tensors`, then
activation into a slot: what every load cost before). Same engine, same adapter, one process.

    python benchmarks/bench_lora_load.py --model models/smollm2 --rank 16   # CPU (fp32)
    python benchmarks/bench_lora_load.py --model /tmp/model1b --rank 64     # GPU (bf16)

An adapter is installed anew when its PEFT config differs from the installed one's, so the
"anew" loads alternate two lora_alpha values; the in-place loads keep one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import TARGETS, median, seconds


def timed_loads(llm, adapters: list, first_id: int) -> tuple[list[float], list[int]]:
    from rlactors.engine import vllm_engine as engine

    ids: list[int] = []
    times = [
        seconds(lambda: ids.append(engine.load_adapter(llm, adapter, first_id + i).lora_int_id))  # noqa: B023
        for i, adapter in enumerate(adapters)
    ]  # each until the copies have landed
    return times, ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    from rlactors import FastLanguageModel
    from rlactors.core.adapter import export_adapter
    from rlactors.loader.fast_state import state_of

    cuda = torch.cuda.is_available()
    model, _ = FastLanguageModel.from_pretrained(
        args.model,
        max_seq_length=512,
        load_in_4bit=False,
        fast_inference=True,
        gpu_memory_utilization=0.3,
        max_lora_rank=args.rank,
        dtype="bfloat16" if cuda else "float32",
        enforce_eager=not cuda,
        **({} if cuda else {"kv_cache_memory_bytes": 512 * 2**20}),
    )
    model = FastLanguageModel.get_peft_model(model, r=args.rank, lora_alpha=args.rank, target_modules=TARGETS)
    with torch.no_grad():  # a trained-looking adapter: lora_B away from PEFT's zeros
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    adapter = export_adapter(model, version=1, dtype=state_of(model).dtype)
    llm = model.vllm_engine
    other = dataclasses.replace(adapter, peft_config={**adapter.peft_config, "lora_alpha": 2 * args.rank})
    anew, anew_ids = timed_loads(llm, [other if i % 2 == 0 else adapter for i in range(args.rounds)], 1000)
    in_place, in_place_ids = timed_loads(llm, [adapter] * args.rounds, 2000)
    assert len(set(anew_ids)) == args.rounds and len(set(in_place_ids)) == 1, (anew_ids, in_place_ids)
    out = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "adapter_mb": round(adapter.nbytes() / 2**20, 1),
        "lora_load_anew_p50_ms": round(median(anew[1:]) * 1000, 2),
        "lora_load_in_place_p50_ms": round(median(in_place) * 1000, 2),
    }
    out["lora_load_in_place_speedup"] = round(out["lora_load_anew_p50_ms"] / out["lora_load_in_place_p50_ms"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
