"""TRL's `rollout_func`: the caller's own generation loop, run in the driver.

    def my_rollout(prompts, trainer):
        ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True) for p in prompts]
        out = trainer.vllm_generate(ids, num_generations=trainer.config.num_generations)
        ...  # more turns, each a `trainer.vllm_generate` call
        return {"prompt_ids": [...], "completion_ids": [...], "logprobs": [...], "env_mask": [...]}

It gets the step's prompts (one per group, not repeated) and returns `num_generations` samples
per prompt, those of a prompt next to each other; `logprobs` are vLLM's for every completion
token (any value where `env_mask` is 0). Other keys go to the reward functions as columns. The
learner checks the log-probs as for any rollout (`max_logprob_mismatch`), so samples that did not
come from the current policy stop the run rather than train it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlactors.trainer.errors import TrainingError

if TYPE_CHECKING:
    from rlactors.core.records import RolloutBatch

REQUIRED = ("prompt_ids", "completion_ids", "logprobs")


def run(func: Any, trainer: Any, indices: list[int], version: int) -> RolloutBatch:
    cfg = trainer.config
    prompts = [trainer.prompts.rows[i][cfg.prompt_column] for i in indices]
    out = dict(func(prompts, trainer))
    missing = [k for k in REQUIRED if k not in out]
    if missing:
        raise TrainingError(f"rollout_func must return the keys {list(REQUIRED)}; missing: {missing}")
    return pack(out, len(prompts), cfg.num_generations, version, trainer.tokenizer)


def pack(out: dict[str, Any], num_prompts: int, num_generations: int, version: int, tokenizer: Any) -> RolloutBatch:
    """rollout_func's lists as a `RolloutBatch` (its `env_mask`, if given, as the loss mask)."""
    import torch

    from rlactors.engine.samples import Sample
    from rlactors.workers.rollout import samples_to_batch

    size = num_prompts * num_generations
    for key in (*REQUIRED, *(k for k in ("env_mask",) if k in out)):
        if len(out[key]) != size:
            raise TrainingError(
                f"rollout_func returned {len(out[key])} {key} for {num_prompts} prompts x num_generations="
                f"{num_generations}: return {size}, the samples of each prompt next to each other"
            )
    for i, (ids, logprobs) in enumerate(zip(out["completion_ids"], out["logprobs"])):
        if len(ids) != len(logprobs):
            raise TrainingError(f"rollout_func: sample {i} has {len(ids)} completion_ids and {len(logprobs)} logprobs")
    eos = tokenizer.eos_token_id
    samples = [
        Sample(
            i // num_generations, list(p), list(c), [float(x) for x in lp], "", "stop" if c[-1:] == [eos] else "length"
        )
        for i, (p, c, lp) in enumerate(zip(out["prompt_ids"], out["completion_ids"], out["logprobs"]))
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    batch = samples_to_batch(samples, num_generations, version, pad)
    batch.completions = tokenizer.batch_decode([s.completion_token_ids for s in samples], skip_special_tokens=True)
    if "env_mask" in out:
        mask = torch.zeros_like(batch.completion_mask)
        for row, m in enumerate(out["env_mask"]):
            if len(m) != len(samples[row].completion_token_ids):
                raise TrainingError(f"rollout_func: sample {row}'s env_mask and completion_ids differ in length")
            mask[row, : len(m)] = torch.tensor([int(bool(x)) for x in m], dtype=torch.long)
        batch.env_mask = mask
    extra = {k: list(v) for k, v in out.items() if k not in (*REQUIRED, "env_mask")}
    batch.columns = extra or None
    batch.check()
    return batch


def unpack(batch: RolloutBatch) -> dict[str, list]:
    """A batch as lists per sample (padding removed)."""
    out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "text": batch.completions}
    for row in range(batch.size):
        prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()]
        real = batch.completion_mask[row].bool()
        out["prompt_ids"].append(prompt.tolist())
        out["completion_ids"].append(batch.completion_ids[row][real].tolist())
        out["logprobs"].append(batch.behaviour_logprobs[row][real].tolist())
    return out
