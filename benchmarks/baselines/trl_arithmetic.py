"""TRL's GRPOTrainer on the README's main example, as `bench_time_to_reward.py` compares it:

    python benchmarks/baselines/trl_arithmetic.py --model DIR --steps 30 --log rows.jsonl

The same task as `examples/arithmetic_grpo.yaml`: its dataset and reward functions (`exact_answer`
+ 0.5 x `number_only`), 8 prompts x 8 completions of up to 32 tokens a step (one generation, one
optimizer step), LoRA r=16 / alpha 32 on the seven projections, learning rate 2e-4 held constant,
loss `dapo`, beta 0, temperature 1, seed 0. On a GPU: vLLM colocated at the example's share (0.3), bf16; on a
CPU: transformers' generate, fp32 (TRL's own CPU path). Each logged step goes to `--log` as one
JSON line with `elapsed_s` since this process began, so the caller times both frameworks alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

STARTED = time.time()
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29531")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import TARGETS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log", required=True)
    parser.add_argument("--output-dir", default="/tmp/trl-arithmetic")
    args = parser.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlactors.reward_funcs import exact_answer, number_only

    on_gpu = torch.cuda.is_available()
    log = open(args.log, "w")  # one line a step, for as long as training runs

    class Rows(TrainerCallback):
        def on_log(self, _args, state, _control, logs=None, **_):
            if logs and "reward" in logs:
                row = {"step": state.global_step, "elapsed_s": round(time.time() - STARTED, 2), **logs}
                log.write(json.dumps(row) + "\n")
                log.flush()

    config = GRPOConfig(
        output_dir=args.output_dir,
        per_device_train_batch_size=64,  # completions: 8 prompts x 8
        gradient_accumulation_steps=1,
        num_generations=8,
        max_completion_length=32,
        temperature=1.0,
        learning_rate=2e-4,
        lr_scheduler_type="constant",  # rlactors' default; TRL's own is linear decay
        loss_type="dapo",
        beta=0.0,
        reward_weights=[1.0, 0.5],
        max_steps=args.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        bf16=on_gpu,
        use_cpu=not on_gpu,
        gradient_checkpointing=False,
        use_vllm=on_gpu,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.3,
        vllm_max_model_length=256,
    )
    trainer = GRPOTrainer(
        model=args.model,
        reward_funcs=[exact_answer, number_only],
        args=config,
        train_dataset=load_dataset("json", data_files="examples/arithmetic.jsonl", split="train"),
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS),
        callbacks=[Rows()],
    )
    trainer.train()
    log.close()


if __name__ == "__main__":
    main()
