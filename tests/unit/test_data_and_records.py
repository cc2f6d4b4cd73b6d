"""Prompts, the resumable sampler and RolloutBatch's shape checks."""

import json

import pytest
import torch

from rlactors.core.records import RolloutBatch, concat_batches
from rlactors.trainer.prompts import (
    DatasetError,
    PromptSampler,
    PromptTable,
    check_local_inputs,
    load_rows,
    tokenize_prompt,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    from rlactors.loader.fast_language_model import load_tokenizer

    return load_tokenizer(smollm2)


def test_chat_template_applied_once_and_text_kept(tokenizer):
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    ids = tokenize_prompt(tokenizer, messages)
    text = tokenizer.decode(ids)
    assert text.count("<|im_start|>user") == 1 and text.endswith("<|im_start|>assistant\n")
    assert tokenize_prompt(tokenizer, "plain text") == list(tokenizer("plain text").input_ids)


def test_overlong_prompts_are_dropped_and_counted(tokenizer):
    rows = [{"prompt": "short"}, {"prompt": "word " * 300}]
    table = PromptTable.build(rows, tokenizer, "prompt", max_prompt_length=50)
    assert len(table) == 1 and table.filtered_overlong == 1
    with pytest.raises(DatasetError, match="all 1 prompts are longer than max_prompt_length=5"):
        PromptTable.build(rows[1:], tokenizer, "prompt", max_prompt_length=5)


def test_missing_prompt_column_names_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "hi"}) + "\n")
    with pytest.raises(DatasetError, match=r"prompt_column='prompt' is not a column .*\['question'\]"):
        load_rows(str(path), "train", "prompt")
    with pytest.raises(DatasetError, match="no such file"):
        load_rows(str(tmp_path / "nope.jsonl"), "train", "prompt")


def test_a_mistyped_prompt_column_fails_before_ray_starts(tmp_path):
    """`train()` checks the column where the first row is at hand: the run fails in a blink."""
    from datasets import Dataset

    lines = tmp_path / "d.jsonl"
    lines.write_text("\n" + json.dumps({"question": "hi"}) + "\n")
    array = tmp_path / "a.json"
    array.write_text(json.dumps([{"question": "hi"}], indent=1))
    for data in (str(lines), [{"question": "hi"}], Dataset.from_list([{"question": "hi"}])):
        with pytest.raises(DatasetError, match=r"prompt_column='prompt' is not a column .*\['question'\]"):
            check_local_inputs(None, data, "prompt")
        check_local_inputs(None, data, "question")
    check_local_inputs(None, str(array), "prompt")  # a JSON array: left to the load, which checks it
    with pytest.raises(DatasetError, match="is not a column"):
        load_rows(str(array), "train", "prompt")


def test_sampler_epochs_no_repeats_and_exact_resume():
    sampler = PromptSampler(size=5, seed=1)
    first_epoch = sampler.next_batch(5)
    assert sorted(first_epoch) == list(range(5))
    sampler.next_batch(3)
    saved = sampler.state()
    expected = sampler.next_batch(4)  # spans the end of epoch 1
    again = PromptSampler(size=5, seed=1)
    again.restore(saved)
    assert again.next_batch(4) == expected
    with pytest.raises(DatasetError, match="dataset of 5 usable prompts, this one has 6"):
        PromptSampler(size=6, seed=1).restore(saved)


def _batch(b=4, p=3, c=2, g=2, version=0):
    return RolloutBatch(
        prompt_ids=torch.ones(b, p, dtype=torch.long),
        prompt_mask=torch.ones(b, p, dtype=torch.long),
        completion_ids=torch.ones(b, c, dtype=torch.long),
        completion_mask=torch.ones(b, c, dtype=torch.long),
        behaviour_logprobs=torch.zeros(b, c),
        prompt_index=torch.arange(b) // g,
        sample_index=torch.arange(b) % g,
        truncated=torch.zeros(b, dtype=torch.bool),
        completions=["x"] * b,
        adapter_version=version,
        num_generations=g,
    )


def test_rollout_batch_checks_shapes():
    _batch()
    with pytest.raises(ValueError, match="behaviour_logprobs"):
        RolloutBatch(**{**_batch().__dict__, "behaviour_logprobs": torch.zeros(4, 3)})
    with pytest.raises(ValueError, match="not whole groups of 3"):
        _batch(g=3)


def test_concat_refuses_mixed_versions_and_pads():
    a, b = _batch(c=2), _batch(c=5)
    joined = concat_batches([a, b], pad_id=0)
    assert joined.completion_ids.shape == (8, 5) and joined.completion_mask[:4, 2:].sum() == 0
    with pytest.raises(ValueError, match="adapter versions"):
        concat_batches([a, _batch(version=1)], pad_id=0)


def test_padding_to_a_multiple_adds_masked_positions_only():
    batch = _batch(p=3, c=5)
    batch.completion_ids = torch.arange(20).view(4, 5)
    batch.completion_mask[1, 3:] = 0
    padded = batch.rows(0, 4, 8)  # trimmed to the rows' own lengths, then padded
    assert padded.prompt_ids.shape == padded.prompt_mask.shape == (4, 8)
    assert padded.completion_ids.shape == padded.behaviour_logprobs.shape == padded.completion_mask.shape == (4, 8)
    assert torch.equal(padded.prompt_ids[:, 5:], batch.prompt_ids) and padded.prompt_mask[:, :5].sum() == 0
    assert torch.equal(padded.completion_ids[:, :5], batch.completion_ids) and padded.completion_mask[:, 5:].sum() == 0
    assert torch.equal(padded.loss_mask[:, :5], batch.loss_mask)
    assert batch.padded(None) is batch and padded.padded(8) is padded  # already a multiple: as it is


def test_lora_adapter_pickles_as_one_buffer_and_round_trips(tmp_path):
    import pickle

    from rlactors.core.adapter import LoRAAdapter

    tensors = {
        "base_model.model.a.lora_A.weight": torch.randn(4, 8).bfloat16(),
        "base_model.model.a.lora_B.weight": torch.randn(8, 4).bfloat16(),
    }
    adapter = LoRAAdapter(version=3, tensors=tensors, peft_config={"r": 4, "lora_alpha": 8})
    payload = pickle.dumps(adapter, protocol=5)
    back = pickle.loads(payload)
    assert back.version == 3 and back.flat is not None and back.flat.numel() == 64
    assert all(torch.equal(back.tensors[k], v) for k, v in tensors.items())
    folder = back.save(str(tmp_path / "a"))
    assert all(torch.equal(LoRAAdapter.load(folder).tensors[k], v) for k, v in tensors.items())


def test_an_iterable_dataset_is_read_only_as_far_as_max_steps_can_draw():
    from datasets import IterableDataset

    def endless():
        i = 0
        while True:
            yield {"prompt": f"p{i}"}
            i += 1

    stream = IterableDataset.from_generator(endless)
    assert [row["prompt"] for row in load_rows(stream, "train", "prompt", limit=3)] == ["p0", "p1", "p2"]
    with pytest.raises(DatasetError, match="IterableDataset.*set max_steps"):
        load_rows(stream, "train", "prompt")
