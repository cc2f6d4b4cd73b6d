"""Shared fixtures. Engines and Ray clusters are expensive (about 30 s each): session-scoped."""

from __future__ import annotations

import gc
import os
import sys

import pytest

from rlactors.testing import make_tiny_model, smollm2_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def _engines_of_a_module_go_with_it():
    """An in-process vLLM engine a module's fixture held is torn down before the next module starts.
    Left to the garbage collector, its teardown can run in the middle of the next engine's start and
    take vLLM's global state (the parallel groups) from under it. On a GPU its memory goes back to the
    device too, not only to this process's cache: the next module's actors measure what is free."""
    yield
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.fixture(scope="session")
def smollm2() -> str:
    path = smollm2_dir()
    if not os.path.isfile(os.path.join(path, "config.json")):
        from rlactors.loader.model_files import prepare_smollm2

        prepare_smollm2(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(smollm2: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_model(str(tmp_path_factory.mktemp("tiny") / "llama"), "llama", smollm2)


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_llama: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny Llama with a one-label score head (random, seeded) and its tokenizer: a reward model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("rm") / "tiny-rm")
    AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen2(smollm2: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_model(str(tmp_path_factory.mktemp("tiny") / "qwen2"), "qwen2", smollm2)


@pytest.fixture
def ray_cluster():
    """The session's local Ray cluster (2 CPUs, like CI), started on first use (and again after a
    multi-node test has replaced it). Always a new one: `address="local"` ignores the address file
    another Ray on this machine (`ray start`, a multi-node test) may have left."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray


@pytest.fixture(scope="session")
def fast_model(smollm2: str):
    """SmolLM2 with a vLLM engine (fp32 on CPU) and a LoRA adapter: one engine for every loader test."""
    from rlactors import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        smollm2,
        max_seq_length=512,
        load_in_4bit=False,
        fast_inference=True,
        gpu_memory_utilization=0.3,
        max_lora_rank=16,
        dtype="float32",
        enforce_eager=True,
        kv_cache_memory_bytes=512 * 2**20,
    )
    return model, tokenizer
