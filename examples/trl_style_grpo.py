"""A TRL / Unsloth GRPO script, run by rlactors: only the imports, the model path and the CPU settings
differ from the notebooks it follows (their lines are kept, marked where they changed).

    python examples/trl_style_grpo.py                  # SmolLM2-135M on CPU, adds numbers, about 15 min
    python examples/trl_style_grpo.py --max-steps 2    # a smoke run

The same file runs on one GPU unchanged (bf16, CUDA graphs, bitsandbytes' paged AdamW there).
The loader's model is trained in place: after `trainer.train()` its LoRA weights are the trained
ones, so `save_lora`, `fast_generate` with `load_lora()` and `save_pretrained_merged` use them.
"""

import argparse
import json
import re

import torch
from datasets import Dataset

# was: from unsloth import FastLanguageModel; from trl import GRPOConfig, GRPOTrainer
from rlactors import FastLanguageModel, GRPOConfig, GRPOTrainer, vLLMSamplingParams


def correctness_reward(prompts, completions, answer, **kwargs):
    """2.0 when the last number in the reply is the answer."""
    replies = [completion[0]["content"] for completion in completions]
    return [2.0 if re.findall(r"-?\d+", r)[-1:] == [a] else 0.0 for r, a in zip(replies, answer)]


def number_only_reward(prompts, completions, **kwargs):
    """0.5 when the reply is a bare number, as the prompt asks."""
    return [0.5 if re.fullmatch(r"\s*-?\d+\s*", c[0]["content"]) else 0.0 for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/smollm2")  # was: "unsloth/Qwen2.5-3B-Instruct"
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--output-dir", default="outputs/trl_style")
    parser.add_argument("--rows", type=int, default=512)
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available()

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model,
        max_seq_length=256,
        load_in_4bit=False,  # was: True (bitsandbytes 4-bit needs CUDA)
        fast_inference=True,
        max_lora_rank=16,
        gpu_memory_utilization=0.3,  # on CPU: vLLM's share of RAM
        **({} if on_gpu else {"kv_cache_memory_bytes": 2**30}),  # was: absent (CPU)
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_alpha=32,
        use_gradient_checkpointing="unsloth",
        random_state=3407,
    )

    with open("examples/arithmetic.jsonl") as f:
        dataset = Dataset.from_list([json.loads(line) for line in f][: args.rows])

    training_args = GRPOConfig(
        learning_rate=2e-4,
        adam_beta1=0.9,
        adam_beta2=0.99,
        weight_decay=0.1,
        warmup_ratio=0.1,
        lr_scheduler_type="cosine",
        optim="paged_adamw_8bit",
        logging_steps=1,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=8,  # 64 completions per step: 8 prompts x 8
        num_generations=8,
        max_prompt_length=96,
        max_completion_length=32,
        max_steps=args.max_steps,
        save_steps=args.max_steps,
        max_grad_norm=0.1,
        report_to="none",
        output_dir=args.output_dir,
        bf16=on_gpu,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=[correctness_reward, number_only_reward],
        args=training_args,
        train_dataset=dataset,
    )
    trainer.train()

    lora_dir = model.save_lora(f"{args.output_dir}/lora")  # the caller's model: the trained adapter
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 23 + 19? Reply with only the number."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    output = (
        model.fast_generate(
            [text],
            sampling_params=vLLMSamplingParams(temperature=0.0, max_tokens=16),
            lora_request=model.load_lora(lora_dir),
        )[0]
        .outputs[0]
        .text
    )
    print(f"== after training, 23 + 19 -> {output!r}")
    model.save_pretrained_merged(f"{args.output_dir}/merged", tokenizer, save_method="merged_16bit")
    print(f"== rewards by step: {[round(row['reward'], 3) for row in trainer.state.log_history]}")


if __name__ == "__main__":
    main()
