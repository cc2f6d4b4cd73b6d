"""A model that learns to use a calculator tool: multi-turn GRPO with TRL's `tools=` on rlactors.

    python examples/calculator_tools.py                  # SmolLM2-135M on CPU, about 15 min
    python examples/calculator_tools.py --max-steps 2    # a smoke run

Every `--eval-steps` steps, before the first and after the last, 8 held-out questions are asked 4
times each with the same seed (TRL's `eval_dataset`, `eval_strategy`): eval_metrics.jsonl's
`eval_reward` is what the training changed, apart from the luck of each step's questions.

Each question is "What is a*b?" with two-digit numbers: SmolLM2-135M cannot multiply those in its
head, but the `multiply` tool can. An episode is: the model answers, or calls the tool; the tool's
result goes back to it; it answers. The rewards: 0.5 for a call with the question's numbers, 1.0
for the right number at the start of the answer.

SmolLM2-135M was never taught to call tools: left alone it never writes `<tool_call>`. So each
prompt ends with the start of the assistant's reply, a prefill (transformers'
`continue_final_message`): `<tool_call>\n{"name": "multiply", "arguments": {"a": `. The model
writes the rest: the numbers, the end of the call (or something else, which the tool answers with
an error), and after the tool's result, its answer. At first it often miscopies a number, breaks
the JSON or ignores the result; the run teaches it to call the tool right and to say the result.
"""

import argparse
import random
import re

import torch
from datasets import Dataset

from rlactors import FastLanguageModel, GRPOConfig, GRPOTrainer

PREFILL = '<tool_call>\n{"name": "multiply", "arguments": {"a": '


def multiply(a: int, b: int) -> int:
    """Multiplies two integers.

    Args:
        a: the first integer
        b: the second integer
    """
    return a * b


def right_call(prompts, completions, answer, **kwargs):
    """0.5 when the tool was called with the question's numbers (its result is the answer)."""
    return [
        0.5 if any(m["role"] == "tool" and m["content"] == a for m in c) else 0.0 for c, a in zip(completions, answer)
    ]


def right_answer(prompts, completions, answer, **kwargs):
    """1.0 when the reply after the tool's result starts with the right number."""
    rewards = []
    for messages, expected in zip(completions, answer):
        replies = [m for m in messages if m["role"] == "assistant"]
        final = replies[-1] if len(replies) > 1 and not replies[-1].get("tool_calls") else None
        numbers = re.findall(r"\d+", final["content"]) if final else []
        rewards.append(1.0 if numbers[:1] == [expected] else 0.0)
    return rewards


def questions(count: int, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        prompt = [{"role": "user", "content": f"What is {a}*{b}?"}, {"role": "assistant", "content": PREFILL}]
        rows.append({"prompt": prompt, "answer": str(a * b)})
    return Dataset.from_list(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/smollm2")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--output-dir", default="outputs/calculator_tools")
    parser.add_argument("--max-completion-length", type=int, default=96)
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--log-completions", action="store_true")
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available()

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model,
        max_seq_length=1024,
        load_in_4bit=on_gpu,  # Unsloth's default; bitsandbytes' 4-bit needs CUDA
        fast_inference=True,
        max_lora_rank=16,
        gpu_memory_utilization=0.3,
        **({} if on_gpu else {"kv_cache_memory_bytes": 2**30}),
    )
    # Unsloth's offloaded checkpointing saves GPU memory; on a CPU a 135M model needs none, and the
    # recomputed forward pass would cost about a fifth of each update
    checkpointing = "unsloth" if on_gpu else False
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, use_gradient_checkpointing=checkpointing)

    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=[right_call, right_answer],
        tools=[multiply],
        args=GRPOConfig(
            learning_rate=3e-4,
            num_generations=8,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=2,  # 16 episodes (2 questions x 8) per step
            max_prompt_length=512,
            max_completion_length=args.max_completion_length,  # all turns and tool results
            log_completions=args.log_completions,
            num_completions_to_print=4,
            max_tool_calling_iterations=2,
            max_steps=args.max_steps,
            save_steps=0,
            report_to="none",
            output_dir=args.output_dir,
            seed=3407,
            eval_strategy="steps",
            eval_steps=args.eval_steps,
            eval_on_start=True,
            num_generations_eval=4,
        ),
        train_dataset=questions(args.max_steps * 2 + 64),
        eval_dataset=questions(8, seed=1),
    )
    trainer.train()
    history = trainer.state.log_history
    for row in [r for r in history if "reward" in r][-3:] + [r for r in history if "eval_reward" in r]:
        shown = ("step", "reward", "tools/failure_frequency", "eval_reward")
        print({k: round(v, 3) for k, v in row.items() if k in shown})


if __name__ == "__main__":
    main()
