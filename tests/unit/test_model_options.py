"""TRL's options on the learner's model (rlactors.workers.model_options): torch.compile's backend
and mode, NEFTune's embedding noise, the LM head in float32; on a tiny Llama, in-process."""

import pytest
import torch

from rlactors.core.config import ConfigError, GRPOConfig
from rlactors.workers.learner import LearnerWorker

pytestmark = pytest.mark.unit


def _learner(model, tmp_path, **kw):
    config = GRPOConfig(
        model_name=model,
        dataset="unused.jsonl",
        reward_funcs=["rlactors.reward_funcs:exact_answer"],
        max_seq_length=128,
        max_completion_length=16,
        max_lora_rank=16,
        lora_r=8,
        num_generations=2,
        prompts_per_step=2,
        gradient_checkpointing=False,
        output_dir=str(tmp_path),
        micro_batch_size=2,
        **kw,
    )
    learner = LearnerWorker(config)
    learner.build()
    return learner


def test_a_compile_backend_or_mode_turns_torch_compile_on_and_reaches_torch_compile(tiny_llama, tmp_path):
    """As transformers: either field sets torch_compile; the learner's layers compile with that
    backend and mode (a backend registered here records what torch.compile hands it)."""
    from torch._dynamo import register_backend, reset

    reset()  # compiles from earlier tests (the same layer code, other modes) would be reused
    calls = []

    @register_backend(name="rlactors_recording")
    def recording(graph, example_inputs, **kwargs):
        calls.append(kwargs)
        return graph.forward

    assert GRPOConfig(torch_compile_mode="max-autotune").torch_compile
    learner = _learner(
        tiny_llama, tmp_path, torch_compile_backend="rlactors_recording", torch_compile_mode="max-autotune"
    )
    assert learner.config.torch_compile
    ids = torch.randint(10, 1000, (2, 6))
    logits = learner.model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    assert calls and calls[0].get("mode") == "max-autotune"


def test_an_unknown_compile_backend_or_mode_is_refused_with_the_field(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match=r"torch_compile_backend='no_such_backend' is not a torch.compile backend"):
        _learner(tiny_llama, tmp_path, torch_compile_backend="no_such_backend")
    with pytest.raises(ConfigError, match="torch_compile_mode='fastest'"):
        GRPOConfig(torch_compile_mode="fastest")


def test_neftune_puts_bounded_uniform_noise_on_the_embeddings_in_every_learner_pass(tiny_llama, tmp_path):
    alpha = 5.0
    learner = _learner(tiny_llama, tmp_path, neftune_noise_alpha=alpha)
    embeddings = learner.model.get_input_embeddings()
    ids = torch.randint(10, 1000, (2, 7))
    clean = torch.nn.functional.embedding(ids, embeddings.weight)
    noise = (embeddings(ids) - clean).abs()
    bound = alpha / (7 * clean.size(-1)) ** 0.5
    assert 0.5 * bound < noise.max() <= bound * (1 + 1e-5)  # uniform in +-bound, as transformers' NEFTune
    first, second = (learner.model(input_ids=ids).logits for _ in range(2))
    assert not torch.allclose(first, second)  # fresh noise each pass
    learner.model.eval()
    assert torch.equal(embeddings(ids), clean)  # training mode only
    learner.model.train()
    quiet = _learner(tiny_llama, tmp_path)
    assert torch.equal(quiet.model(input_ids=ids).logits, quiet.model(input_ids=ids).logits)


def test_cast_lm_head_to_fp32_computes_the_head_in_float32_under_bf16_autocast(tiny_llama, tmp_path):
    learner = _learner(tiny_llama, tmp_path, dtype="bfloat16", cast_lm_head_to_fp32=True)
    base = learner.model.get_base_model()
    head = base.get_output_embeddings()
    assert head.weight.dtype == torch.float32 and base.config.tie_word_embeddings
    ids = torch.randint(10, 1000, (2, 6))
    hidden = torch.randn(2, 6, head.weight.size(1), dtype=torch.bfloat16)
    with learner.mixed_precision():
        logits = head(hidden)
        assert base.get_input_embeddings()(ids).dtype == torch.bfloat16  # tied: the decoder's input stays bf16
        assert learner.model(input_ids=ids).logits.dtype == torch.float32
    assert logits.dtype == torch.float32
    assert torch.equal(logits, hidden.float() @ head.weight.T)  # not rounded through bf16
    with pytest.raises(ConfigError, match="cast_lm_head_to_fp32=true with lm_head in lora_target_modules"):
        GRPOConfig(cast_lm_head_to_fp32=True, lora_target_modules=["q_proj", "lm_head"])
