"""The multi-turn tool loop at GPU speed, in a Qwen2 model class with the hermes tool-calling
ChatML template (Qwen2.5's wording): the embedded SmolLM2 rewritten as Qwen2 (zero q/k/v biases,
the same function: random weights never close a call) runs the calculator episodes of
`examples/calculator_tools.py` (a prefilled call, a `multiply` tool, up to 2 tool rounds) for a few
GRPO steps. The test checks that episodes take several turns with tool results masked and that
the learner reads what vLLM sampled, and prints the step time. Skipped without a GPU."""

import random

import pytest
import torch

from rlactors import GRPOConfig, GRPOTrainer
from rlactors.agent.chat_format import TOOL_CHATML_TEMPLATE
from rlactors.testing import smollm2_dir
from rlactors.testing.models import llama_as_qwen2
from rlactors.testing.tools import multiply

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
PREFILL = '<tool_call>\n{"name": "multiply", "arguments": {"a": '


@pytest.fixture(scope="module")
def qwen2_model(tmp_path_factory):
    return llama_as_qwen2(smollm2_dir(), str(tmp_path_factory.mktemp("gpu") / "smollm2-qwen2"), TOOL_CHATML_TEMPLATE)


def called(prompts, completions, **_):
    return [float(any(m["role"] == "tool" for m in c)) for c in completions]


def test_tool_episodes_at_gpu_speed(qwen2_model, tmp_path):
    rng = random.Random(0)
    rows = []
    for _ in range(64):
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        rows.append(
            {"prompt": [{"role": "user", "content": f"What is {a}*{b}?"}, {"role": "assistant", "content": PREFILL}]}
        )
    config = GRPOConfig(
        model_name=qwen2_model,
        max_seq_length=1024,
        max_prompt_length=512,
        max_completion_length=96,
        num_generations=8,
        prompts_per_step=4,
        max_tool_calling_iterations=2,
        max_steps=6,
        save_steps=0,
        gpu_memory_utilization=0.3,
        output_dir=str(tmp_path),
        progress_bar=False,
        report_to=["jsonl"],
    )
    rows_out = GRPOTrainer(args=config, reward_funcs=[called], train_dataset=rows, tools=[multiply]).train().rows
    steps = sorted(r["step_time_s"] for r in rows_out[2:])
    print(
        f"Qwen2 class, 32 episodes a step: median step {steps[len(steps) // 2]:.2f}s, turns "
        f"{[round(r['episodes/turns_mean'], 2) for r in rows_out]}, tool calls per episode "
        f"{[round(r['tools/call_frequency'], 2) for r in rows_out]}"
    )
    assert all(r["episodes/turns_mean"] > 1 and r["episodes/env_tokens_mean"] > 0 for r in rows_out)
    assert all(r["rewards/called/mean"] > 0 for r in rows_out)  # calls were closed and run
    assert all(r["sampling/logprob_mismatch"] < 0.05 for r in rows_out)  # bf16 on both sides
