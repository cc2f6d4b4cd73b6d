"""from_pretrained / get_peft_model argument errors, raised before anything expensive starts."""

import pytest
import torch

from rlactors import FastLanguageModel

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_seq_length": 0}, "max_seq_length=0: pass a positive int"),
        ({"gpu_memory_utilization": 1.2}, r"gpu_memory_utilization=1.2 is outside \(0, 1\]"),
        ({"gpu_memory_utilization": 0}, r"gpu_memory_utilization=0 is outside \(0, 1\]"),
        ({"max_lora_rank": -1}, "max_lora_rank=-1"),
        ({"use_gradient_checkpointing": "fast"}, "use_gradient_checkpointing='fast': pass True, False or 'unsloth'"),
        ({"dtype": "int8"}, "dtype='int8': pass None, torch.bfloat16"),
    ],
)
def test_bad_arguments(smollm2, kwargs, message):
    args = {"load_in_4bit": False, "fast_inference": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        FastLanguageModel.from_pretrained(smollm2, **args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_4bit_on_cpu_says_what_to_pass(smollm2):
    with pytest.raises(ValueError, match="load_in_4bit=True needs a CUDA GPU.*Pass load_in_4bit=False"):
        FastLanguageModel.from_pretrained(smollm2)  # the default is load_in_4bit=True


def test_missing_model_and_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="neither an existing folder nor a hub id"):
        FastLanguageModel.from_pretrained("./no/such/model", load_in_4bit=False)
    with pytest.raises(ValueError, match="folder without config.json"):
        FastLanguageModel.from_pretrained(str(tmp_path), load_in_4bit=False)


def test_hub_id_unreachable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="could not be fetched from the Hugging Face hub"):
        FastLanguageModel.from_pretrained("someone/not-a-real-model-xyz", load_in_4bit=False, fast_inference=False)


def test_engine_kwargs_without_engine_and_unknown_engine_kwargs(smollm2):
    with pytest.raises(TypeError, match=r"\['enforce_eager'\], which are vLLM engine arguments"):
        FastLanguageModel.from_pretrained(smollm2, load_in_4bit=False, fast_inference=False, enforce_eager=True)
    with pytest.raises(TypeError, match=r"\['not_an_arg'\], which are neither"):
        FastLanguageModel.from_pretrained(smollm2, load_in_4bit=False, not_an_arg=1, gpu_memory_utilization=0.3)


def test_plain_model_has_no_engine(smollm2):
    model, tokenizer = FastLanguageModel.from_pretrained(
        smollm2, load_in_4bit=False, fast_inference=False, use_gradient_checkpointing=True
    )
    assert not hasattr(model, "vllm_engine") and tokenizer.pad_token is not None
    assert model.is_gradient_checkpointing
    with pytest.raises(RuntimeError, match="fast_inference=True"):
        model.fast_generate(["hi"])
    peft = FastLanguageModel.get_peft_model(model, r=8, target_modules=["q_proj"])
    assert not hasattr(peft, "vllm_engine")
    with pytest.raises(ValueError, match="bias='all'"):
        FastLanguageModel.get_peft_model(model, r=8, bias="all")


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
def test_tiny_models_load_and_train_a_lora_step(arch, request):
    model, tokenizer = FastLanguageModel.from_pretrained(
        request.getfixturevalue(arch), load_in_4bit=False, fast_inference=False, use_gradient_checkpointing=False
    )
    peft = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16)
    ids = torch.tensor([tokenizer("a tiny model of a real shape").input_ids])
    loss = peft(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in peft.named_parameters() if "lora_A" in n]
    assert torch.isfinite(loss) and grads and all(g is not None for g in grads)


def test_engine_defaults_follow_the_device():
    from rlactors.engine import spec

    engine = spec.EngineSpec("m", 256, 0.3, 16, max_batch=64)
    assert spec.graph_sizes(64) == [16, 32, 48, 64]
    assert spec.graph_sizes(3) == [16]
    assert spec.graph_sizes(17) == [16, 32]
    # CPU (these tests): eager unless the caller says otherwise
    assert spec.device_defaults(engine, {}) == {"enforce_eager": True}
    assert spec.device_defaults(engine, {"enforce_eager": False}) == {}
    # CUDA, single-turn: full graphs up to the batch, no torch.compile, each size captured once (with LoRA)
    sizes = spec.graph_sizes(64)
    assert spec.device_defaults(engine, {}, cuda=True) == {
        "compilation_config": {
            "cudagraph_capture_sizes": sizes,
            "mode": 0,
            "cudagraph_mode": "FULL",
            "cudagraph_specialize_lora": False,
        }
    }
    # multi-turn episodes: torch.compile kept, full graphs for mixed batches
    agent = spec.EngineSpec("m", 256, 0.3, 16, max_batch=64, mixed_batches=True)
    assert spec.device_defaults(agent, {}, cuda=True) == {
        "compilation_config": {"cudagraph_capture_sizes": sizes, "cudagraph_mode": "FULL"}
    }
    exact = spec.EngineSpec("m", 256, 0.3, 16, max_batch=64, mixed_batches=True, deterministic=True)
    assert spec.device_defaults(exact, {}, cuda=True) == {"compilation_config": {"cudagraph_capture_sizes": sizes}}
    assert spec.device_defaults(engine, {"compilation_config": {}}, cuda=True) == {}  # the caller's own
    assert spec.device_defaults(engine, {"enforce_eager": True}, cuda=True) == {}
