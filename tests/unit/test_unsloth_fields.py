"""Unsloth's own GRPOConfig fields, as its GRPO notebooks set them, in rlactors' GRPOConfig."""

import pytest

from rlactors import GRPOConfig
from rlactors.core.config import ConfigError

pytestmark = pytest.mark.unit


def test_an_unsloth_notebooks_vllm_sampling_params_become_the_runs_sampling():
    from rlactors import vLLMSamplingParams

    params = vLLMSamplingParams(
        min_p=0.1, top_p=1.0, top_k=-1, seed=3407, stop=["<|im_end|>"], include_stop_str_in_output=True
    )
    config = GRPOConfig(vllm_sampling_params=params, temperature=1.0, num_generations=6, max_completion_length=64)
    assert (config.min_p, config.seed, config.temperature, config.num_generations) == (0.1, 3407, 1.0, 6)
    assert config.sampling_extras() == {"min_p": 0.1, "stop": ["<|im_end|>"], "include_stop_str_in_output": True}


def test_the_configs_own_values_win_and_what_the_run_sets_is_left_out_with_a_warning():
    given = {"temperature": 0.7, "max_tokens": 300, "logprobs": 5, "min_tokens": 4}
    with pytest.warns(UserWarning, match=r"temperature=0.7 \(the config's temperature=1.0 wins\).*\['logprobs'\]"):
        config = GRPOConfig(vllm_sampling_params=given, temperature=1.0, generation_kwargs={"min_tokens": 8})
    assert config.temperature == 1.0 and config.max_completion_length == 300
    assert config.generation_kwargs == {"min_tokens": 8}  # generation_kwargs' own entries win


def test_unsloths_chunking_fields_have_no_effect_and_a_bad_value_is_named():
    GRPOConfig(unsloth_num_chunks=-1, unsloth_grpo_mini_batch=None)  # Unsloth's defaults: nothing said
    with pytest.warns(UserWarning, match=r"\['unsloth_num_chunks'\] have no effect here"):
        GRPOConfig(unsloth_num_chunks=4)
    with pytest.raises(ConfigError, match="vllm_sampling_params=str: give a vLLM SamplingParams"):
        GRPOConfig(vllm_sampling_params="min_p=0.1")
