"""A TRL/Unsloth-shaped script, changed only in its imports: the loader's model given to
GRPOTrainer(model=..., args=GRPOConfig(TRL fields), ...) is trained in place, with no second engine."""

import os

import pytest
import torch

from rlactors import FastLanguageModel, GRPOConfig, GRPOTrainer, vLLMSamplingParams
from rlactors.core.adapter import LoRAAdapter

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def count_vowels(prompts, completions, **_):
    return [sum(ch in "aeiou" for ch in c) / 10 for c in completions]


def brief(completion_ids, trainer_state, log_metric, **kwargs):
    """TRL's other reward keywords: each sample's token ids, the run's TrainerState, a metric."""
    log_metric("brief/ids_per_completion", sum(map(len, completion_ids)) / len(completion_ids))
    log_metric("brief/state_step", trainer_state.global_step)  # the steps done before this one, as in TRL
    return [-len(ids) / 100 for ids in completion_ids]


@pytest.fixture(scope="module")
def caller_model(tiny_llama):
    model, tokenizer = FastLanguageModel.from_pretrained(
        tiny_llama,
        max_seq_length=128,
        load_in_4bit=False,
        fast_inference=True,
        gpu_memory_utilization=0.25,
        max_lora_rank=16,
        dtype="float32",
        enforce_eager=True,
        kv_cache_memory_bytes=256 * 2**20,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        use_gradient_checkpointing="unsloth",
        random_state=3407,
    )
    return model, tokenizer


def test_the_callers_model_is_trained_in_place_with_trl_call_and_fields(ray_cluster, caller_model, tmp_path):
    import datasets
    from transformers import TrainerCallback

    model, tokenizer = caller_model
    events = []

    class StopAtThree(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            events.append(("begin", state.global_step, kwargs["model"] is model))

        def on_log(self, args, state, control, logs=None, **kwargs):
            events.append(("log", state.global_step, round(logs["reward"], 6)))

        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 3

        def on_save(self, args, state, control, **kwargs):
            events.append(("save", state.global_step))

        def on_train_end(self, args, state, control, **kwargs):
            events.append(("end", state.global_step))

    args = GRPOConfig(
        learning_rate=1e-2,
        adam_beta1=0.9,
        adam_beta2=0.99,
        weight_decay=0.1,
        warmup_ratio=0.1,
        lr_scheduler_type="cosine",
        optim="adamw_8bit",
        logging_steps=1,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        num_generations=2,
        max_prompt_length=32,
        max_completion_length=8,
        max_steps=5,
        save_steps=2,
        max_grad_norm=0.1,
        report_to="none",
        output_dir=str(tmp_path / "outputs"),
        use_vllm=True,
        vllm_mode="colocate",
        progress_bar=False,
        # Unsloth's notebooks' sampling, as they write it
        vllm_sampling_params=vLLMSamplingParams(
            min_p=0.1, top_p=1.0, top_k=-1, seed=3407, stop=[tokenizer.eos_token], include_stop_str_in_output=True
        ),
    )
    rows = datasets.Dataset.from_list([{"prompt": f"Say something about {i}:"} for i in range(8)])
    assert args.min_p == 0.1 and args.seed == 3407 and args.generation_kwargs["stop"] == [tokenizer.eos_token]
    with pytest.warns(UserWarning, match="optim='adamw_8bit' needs bitsandbytes on CUDA"):
        trainer = GRPOTrainer(
            model=model,
            processing_class=tokenizer,
            reward_funcs=[count_vowels, brief],
            args=args,
            train_dataset=rows,
            callbacks=[StopAtThree],
        )
        result = trainer.train()

    # One process, the caller's objects: the learner trains the caller's model, vLLM is the caller's engine.
    assert trainer.learners.local.model is model and trainer.rollouts.local._engine is model.vllm_engine
    assert trainer.learners.actors == [] and trainer.rollouts.actors == []
    # The callback stopped the run after step 3 (of 5); every step was logged and the stop step saved.
    assert result.global_step == 3 and trainer.state.global_step == 3
    # what transformers' TrainOutput holds: the steps' mean loss, and the call's runtime and rates
    assert result.training_loss == pytest.approx(sum(r["loss"] for r in result.rows) / 3)
    assert result.metrics["train_loss"] == result.training_loss and result.metrics["train_runtime"] > 0
    assert result.metrics["train_steps_per_second"] == pytest.approx(3 / result.metrics["train_runtime"], rel=1e-2)
    assert [e[0] for e in events] == ["begin", "log", "log", "save", "log", "save", "end"]
    assert events[0] == ("begin", 0, True)
    assert [row["step"] for row in trainer.state.log_history] == [1, 2, 3]
    assert [row["brief/state_step"] for row in result.rows] == [0, 1, 2]
    assert all(1 <= row["brief/ids_per_completion"] <= 8 for row in result.rows)  # max_completion_length=8
    for row in result.rows:
        assert row["rewards/brief/mean"] == pytest.approx(-row["brief/ids_per_completion"] / 100, abs=1e-6)
    # The caller's model now holds the learner's final adapter: what save_lora writes is final/.
    final = LoRAAdapter.load(result.final_adapter).tensors
    saved = LoRAAdapter.load(model.save_lora(str(tmp_path / "mine"))).tensors
    assert final.keys() == saved.keys()
    assert all(torch.equal(final[k], saved[k]) for k in final)
    assert any(k.endswith("lora_B.weight") and final[k].abs().sum() > 0 for k in final)
    # fast_generate with load_lora() serves the trained adapter: vLLM's log-probs of a completion
    # match the learner's own within the run's bound.
    out = model.fast_generate(
        ["Say something about 3:"],
        sampling_params=vLLMSamplingParams(max_tokens=6, temperature=1.0, logprobs=0),
        lora_request=model.load_lora(),
    )[0].outputs[0]
    prompt_ids = tokenizer("Say something about 3:").input_ids
    ids = torch.tensor([prompt_ids + list(out.token_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
    ours = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(out.token_ids)[:, None]).squeeze(-1)
    theirs = torch.tensor([next(iter(lp.values())).logprob for lp in out.logprobs])
    assert (ours - theirs).abs().max() < 1e-3
    # save_model writes a PEFT folder with the tokenizer, as TRL's does.
    folder = trainer.save_model(str(tmp_path / "saved"))
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= set(os.listdir(folder))
    # Training goes on from the adapter the model holds: the first step samples under it, not the base.
    more = args.model_copy(update={"max_steps": 1, "output_dir": str(tmp_path / "more"), "vllm_sampling_params": None})
    again = GRPOTrainer(
        model=model, processing_class=tokenizer, reward_funcs=[count_vowels], args=more, train_dataset=rows
    )
    [row] = again.train().rows
    assert row["sampling/logprob_mismatch"] < 1e-3


def _served_logprobs(folder, ids, num_scored):
    """vLLM's log-probs of the last `num_scored` of `ids` under the model in `folder`, without LoRA, from
    an engine in a process of its own (an in-process engine torn down takes vLLM's global state with it)."""
    import json
    import subprocess
    import sys

    script = (
        "import json, sys, torch\n"
        "from rlactors.engine import vllm_engine\n"
        "from rlactors.loader.fast_language_model import load_engine\n"
        "llm = load_engine(sys.argv[1], 128, torch.float32, 0.25, 16, enforce_eager=True,"
        " kv_cache_memory_bytes=128 * 2**20)\n"
        "print(json.dumps(vllm_engine.prompt_logprobs(llm, json.loads(sys.argv[2]), int(sys.argv[3]), None)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, folder, json.dumps(ids), str(num_scored)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_exports_of_the_trained_model_round_trip(caller_model, tmp_path):
    """Merged 16-bit folder served by vLLM without LoRA = base + adapter in vLLM; the GGUF file loads in
    transformers with the merged model's logits; push_to_hub_merged offline says nothing was sent."""
    from transformers import AutoModelForCausalLM

    from rlactors.engine import vllm_engine

    model, tokenizer = caller_model
    merged = model.save_pretrained_merged(str(tmp_path / "merged"), tokenizer, save_method="merged_16bit")
    ids = tokenizer("Say something about 5: the number five is odd").input_ids
    with_lora = vllm_engine.prompt_logprobs(model.vllm_engine, ids, 8, model.load_lora())
    base_only = vllm_engine.prompt_logprobs(model.vllm_engine, ids, 8, None)
    without_lora = _served_logprobs(merged, ids, 8)
    assert max(abs(a - b) for a, b in zip(with_lora, without_lora)) < 1e-3
    # The adapter matters: the base model alone is further away than the bound.
    assert max(abs(a - b) for a, b in zip(base_only, without_lora)) > 1e-3

    gguf_path = model.save_pretrained_gguf(str(tmp_path / "gguf"), tokenizer, quantization_method="not_quantized")
    folder, name = os.path.split(gguf_path)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (reloaded(x).logits - reference(x).logits).abs().max() < 1e-2

    with pytest.raises(ConnectionError, match="nothing was uploaded"):
        model.push_to_hub_merged("someone/tiny-grpo", tokenizer, save_method="lora", token="hf_offline_test")


def test_cli_export_of_a_final_adapter(caller_model, tmp_path):
    """`rlactors export ADAPTER --merged DIR --gguf q8_0` on a PEFT folder the loader wrote."""
    import subprocess
    import sys

    model, _ = caller_model
    adapter = model.save_lora(str(tmp_path / "final"))
    merged = tmp_path / "merged"
    done = subprocess.run(
        [sys.executable, "-m", "rlactors", "export", adapter, "--merged", str(merged), "--gguf", "q8_0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"config.json", "model.safetensors", "model-Q8_0.gguf", "tokenizer.json"} <= set(os.listdir(merged))
    missing = subprocess.run(
        [sys.executable, "-m", "rlactors", "export", str(tmp_path / "nothing"), "--merged", str(merged)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "has no adapter_config.json" in missing.stderr
