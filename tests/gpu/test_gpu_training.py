"""GRPO on CUDA: `gpu_memory_utilization: auto` measures the learner and gives vLLM the rest; a vLLM
start with too little free memory is an error naming the worker and quoting vLLM. Skipped without
a GPU; run on the lent GPU machine:

    RLACTORS_TOKENIZER_DIR=.bench/tok python -m pytest tests/gpu -s
"""
import re

import pytest
import torch

from rlactors import GRPOConfig, GRPOTrainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def length_reward(prompts, completions, **_):
    return [len(c) / 100 for c in completions]


def _config(model_dir, tmp_path, **kw):
    values = dict(model_name=model_dir, max_seq_length=512, max_prompt_length=64, max_completion_length=64,
                  max_lora_rank=16, lora_r=16, num_generations=4, prompts_per_step=4, learning_rate=1e-5,
                  micro_batch_size=16, gradient_checkpointing=False, output_dir=str(tmp_path / "run"), max_steps=2,
                  save_steps=0, progress_bar=False, report_to=["jsonl"], engine_kwargs={"enforce_eager": True})
    values.update(kw)
    return GRPOConfig(**values)


def test_auto_memory_share_trains(model_dir, tmp_path, capsys):
    config = _config(model_dir, tmp_path, gpu_memory_utilization="auto", num_rollout_workers=0, num_learner_workers=0)
    result = GRPOTrainer(config, reward_funcs=[length_reward],
                         train_dataset=[{"prompt": f"Tell a story about {i}."} for i in range(16)]).train()
    printed = capsys.readouterr().out
    share = float(re.search(r"gpu_memory_utilization auto -> ([0-9.]+) \(the learner needs", printed).group(1))
    total = torch.cuda.get_device_properties(0).total_memory
    print(f"auto share {share} of {total / 2**30:.0f} GiB")
    assert 0.5 < share <= 0.95  # a 0.2B model and 16 x 128 tokens leave vLLM most of the GPU
    assert [r["adapter_version"] for r in result.metrics] == [1, 2]
    assert all(r["sampling/logprob_mismatch"] < 0.05 for r in result.metrics)


def test_too_little_free_memory_names_the_worker_and_quotes_vllm(model_dir, tmp_path):
    from rlactors.workers.rollout import EngineStartError, RolloutWorker

    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(int(free * 0.5), dtype=torch.uint8, device="cuda")  # half of what is free now
    try:
        worker = RolloutWorker(_config(model_dir, tmp_path, gpu_memory_utilization=0.9))
        with pytest.raises(EngineStartError, match=r"(?s)rollout worker 0 could not start vLLM with "
                                                   r"gpu_memory_utilization=0.9.*[Ff]ree memory.*Fix: lower"):
            worker.build()
    finally:
        del hog
        torch.cuda.empty_cache()
