"""A group's prompt computed once for its samples (`rlactors.workers.shared_prompt`): the same
log-probs and gradients as a row per sample, on the real SmolLM2 with a LoRA adapter."""

import pytest
import torch

from rlactors.core.algorithm import selective_logprobs
from rlactors.core.records import RolloutBatch
from rlactors.workers import shared_prompt

pytestmark = pytest.mark.unit


def micro_batch():
    """Two prompts (40 and 25 tokens, left-padded), four samples each of 0-12 tokens (right-padded)."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 40000, (n,), generator=g) for n in (40, 25)]
    lengths = [10, 7, 12, 3, 12, 1, 9, 0]
    b, p, c = len(lengths), 40, 12
    prompt_ids, prompt_mask = torch.zeros(b, p, dtype=torch.long), torch.zeros(b, p, dtype=torch.long)
    completion_ids, completion_mask = torch.zeros(b, c, dtype=torch.long), torch.zeros(b, c, dtype=torch.long)
    for i, n in enumerate(lengths):
        prompt = prompts[i // 4]
        prompt_ids[i, p - len(prompt) :], prompt_mask[i, p - len(prompt) :] = prompt, 1
        completion_ids[i, :n], completion_mask[i, :n] = torch.randint(100, 40000, (n,), generator=g), 1
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        behaviour_logprobs=torch.zeros(b, c),
        prompt_index=torch.tensor([0] * 4 + [1] * 4),
        sample_index=torch.arange(b) % 4,
        truncated=torch.zeros(b, dtype=torch.bool),
        completions=[""] * b,
        adapter_version=0,
        num_generations=4,
    )


def test_packed_rows_give_the_log_probs_and_gradients_of_a_row_per_sample(smollm2):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32, attn_implementation="sdpa")
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    model = get_peft_model(model, lora)
    mb = micro_batch()
    assert shared_prompt.tokens_saved(mb.prompt_ids, mb.prompt_mask) == 3 * 40 + 3 * 25
    results = []
    for share in (False, True):
        model.zero_grad()
        logp = selective_logprobs(shared_prompt.completion_logits(model, mb, share), mb.completion_ids, 0.9)
        logp = logp * mb.completion_mask
        logp.sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        results.append((logp.detach(), grads))
    (alone, alone_grads), (packed, packed_grads) = results
    assert (alone - packed).abs().max() < 1e-4
    assert (alone_grads - packed_grads).norm() / alone_grads.norm() < 1e-4
    assert packed[:7, 0].abs().min() > 0  # the first token of each completion (the last is empty), at the prompt end


def test_only_samples_of_the_very_same_prompt_share_it_and_never_under_flash_attention():
    mb = micro_batch()
    assert shared_prompt.runs(mb.prompt_ids, mb.prompt_mask) == [(0, 4), (4, 8)]
    ids = mb.prompt_ids.clone()
    ids[2, -1] += 1  # one token differs: its own run, whatever prompt_index says
    assert shared_prompt.runs(ids, mb.prompt_mask) == [(0, 2), (2, 3), (3, 4), (4, 8)]
    assert shared_prompt.tokens_saved(mb.prompt_ids[3:5], mb.prompt_mask[3:5]) == 0

    from types import SimpleNamespace

    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    assert not shared_prompt.shares_prompt(None, flash, "cpu")
    with pytest.raises(ValueError, match="share_prompt_forward=True needs attention that takes a 4D mask"):
        shared_prompt.shares_prompt(True, flash, "cpu")
    assert shared_prompt.shares_prompt(None, object(), "cpu")  # on a CPU learner by default
    assert not shared_prompt.shares_prompt(None, object(), "cuda")
