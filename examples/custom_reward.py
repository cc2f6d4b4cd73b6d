"""The Python API with a reward function of your own, on a local Ray (one is started if needed).

    python examples/custom_reward.py [--steps N]

Rewards use TRL's signature: f(prompts, completions, **kwargs) -> list[float | None]; dataset
columns arrive as keyword arguments, with TRL's completion_ids, log_metric, log_extra and (to a
function that names it) trainer_state; return None where a sample cannot be scored.
"""

import argparse
import json
import re

from rlactors import GRPOConfig, GRPOTrainer


def brief_and_right(prompts, completions, answer, **kwargs):
    """1.0 for the right number, minus 0.02 per word past the first; None if there is no number."""
    rewards = []
    for completion, expected in zip(completions, answer):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        numbers = re.findall(r"-?\d+", text)
        if not numbers:
            rewards.append(None)
            continue
        words = len(text.split())
        rewards.append(float(numbers[-1] == expected) - 0.02 * max(0, words - 1))
    return rewards


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--output-dir", default="runs/custom_reward")
    args = parser.parse_args()
    with open("examples/arithmetic.jsonl") as f:
        rows = [json.loads(line) for line in f][:256]
    config = GRPOConfig(
        model_name="models/smollm2",
        max_seq_length=256,
        gpu_memory_utilization=0.3,
        max_lora_rank=16,
        lora_r=16,
        lora_alpha=32,
        num_generations=8,
        prompts_per_step=4,
        max_prompt_length=96,
        max_completion_length=32,
        learning_rate=2e-4,
        max_steps=args.steps,
        save_steps=0,
        output_dir=args.output_dir,
        gradient_checkpointing=False,
    )
    result = GRPOTrainer(config, reward_funcs=[brief_and_right], train_dataset=rows).train()
    print(
        f"trained {result.global_step} steps; adapter in {result.final_adapter}; "
        f"reward {result.rows[0]['reward']:.3f} -> {result.rows[-1]['reward']:.3f}"
    )


if __name__ == "__main__":
    main()
