"""TRL's `GRPOConfig` field names in rlactors' `GRPOConfig`.

Every field of TRL's `GRPOConfig` (its own and those it inherits from transformers'
`TrainingArguments`) is one of:

- a field of rlactors' `GRPOConfig` with the same name and meaning (`learning_rate`, `beta`, ...);
- TRANSLATED: a TRL name that `translate` turns into rlactors' fields (batch sizes, precision,
  retention, ...);
- NOT_HERE: a field with no meaning in rlactors (distribution, evaluation, the hub, TRL's own vLLM
  server): accepted, and one warning lists those given and says why;
- NOT_YET: a training feature TRL has and rlactors does not: accepted at TRL's default value,
  refused with an error that names the field otherwise (never ignored silently).

`tests/unit/test_trl_fields.py` walks the installed TRL's fields, so a TRL upgrade that adds one
fails there until it is placed here.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

# TRL name -> what it becomes here (the docs of `translate`).
TRANSLATED: dict[str, str] = {
    "per_device_train_batch_size": "micro_batch_size (samples per learner forward), and with the next two the "
    "generation batch",
    "gradient_accumulation_steps": "micro-batches per optimizer step (with steps_per_generation)",
    "steps_per_generation": "micro-batches per generation (default gradient_accumulation_steps): prompts_per_step = "
    "per_device_train_batch_size * learners * steps_per_generation / num_generations; num_mini_batches = "
    "steps_per_generation / gradient_accumulation_steps optimizer steps per generation (TRL's max_steps, "
    "which counts optimizer steps, divided by it)",
    "generation_batch_size": "samples per generation: prompts_per_step = generation_batch_size / num_generations",
    "lr_scheduler_kwargs": "cosine_with_min_lr's min_lr_rate, or min_lr / learning_rate: min_lr_rate (num_cycles: "
    "0.5 only)",
    "warmup_ratio": "warmup_steps = ceil(warmup_ratio * max_steps) (transformers 4's name; warmup_steps < 1 too)",
    "bf16": "dtype: bfloat16",
    "fp16": "dtype: float16",
    "shuffle_dataset": "shuffle",
    "save_total_limit": "keep_last",
    "save_strategy": '"no": save_steps 0 (only final/); "steps": save_steps',
    "disable_tqdm": "progress_bar = not disable_tqdm",
    "num_train_epochs": "max_steps = ceil(num_train_epochs * prompts / prompts_per_step) when max_steps is not given",
    "vllm_gpu_memory_utilization": "gpu_memory_utilization",
    "vllm_max_model_length": "max_seq_length",
    "vllm_importance_sampling_cap": "vllm_importance_sampling_clip_max (TRL's older name)",
}

_DISTRIBUTED = "rlactors distributes with Ray actors (num_learner_workers, placement), not accelerate/torchrun"
_EVAL = (
    "evaluation here samples and scores the eval prompts (eval_strategy, eval_steps, eval_delay, eval_on_start, "
    "num_generations_eval): no loss pass, no best model kept"
)
_HUB = "rlactors does not push to the Hub while training (push_to_hub_merged after training does)"
_DATALOADER = "rlactors draws prompts with its own resumable sampler (seed, shuffle)"
_LOGGING = "rlactors logs every step to the run folder (metrics.jsonl, report_to) and the console"
_TRL_VLLM = "rlactors always generates with vLLM in its own rollout workers (num_rollout_workers, placement)"
_TRACKIO = "rlactors reports to jsonl, tensorboard, wandb and mlflow only"

NOT_HERE: dict[str, str] = {
    **dict.fromkeys(
        [
            "ddp_find_unused_parameters",
            "ddp_bucket_cap_mb",
            "ddp_broadcast_buffers",
            "ddp_static_graph",
            "ddp_backend",
            "ddp_timeout",
            "fsdp",
            "fsdp_config",
            "deepspeed",
            "local_rank",
            "accelerator_config",
            "parallelism_config",
            "average_tokens_across_devices",
            "ds3_gather_for_generation",
            "log_on_each_node",
            "save_on_each_node",
            "use_cpu",
            "auto_find_batch_size",
        ],
        _DISTRIBUTED,
    ),
    **dict.fromkeys(
        [
            "per_device_eval_batch_size",
            "prediction_loss_only",
            "eval_do_concat_batches",
            "eval_use_gather_object",
            "eval_accumulation_steps",
            "include_for_metrics",
            "batch_eval_metrics",
            "bf16_full_eval",
            "fp16_full_eval",
            "do_eval",
            "do_predict",
            "metric_for_best_model",
            "greater_is_better",
        ],
        _EVAL,
    ),
    **dict.fromkeys(
        [
            "push_to_hub",
            "hub_token",
            "hub_private_repo",
            "hub_model_id",
            "hub_strategy",
            "hub_always_push",
            "hub_revision",
            "log_completions_hub_repo",
        ],
        _HUB,
    ),
    **dict.fromkeys(
        [
            "dataloader_drop_last",
            "dataloader_num_workers",
            "dataloader_pin_memory",
            "dataloader_persistent_workers",
            "dataloader_prefetch_factor",
            "dataloader_multiprocessing_context",
            "dataloader_in_order",
            "remove_unused_columns",
            "label_names",
            "train_sampling_strategy",
            "length_column_name",
            "data_seed",
            "ignore_data_skip",
            "pad_to_multiple_of",
        ],
        _DATALOADER,
    ),
    **dict.fromkeys(
        [
            "logging_strategy",
            "logging_first_step",
            "logging_nan_inf_filter",
            "include_num_input_tokens_seen",
            "log_level",
            "log_level_replica",
            "skip_memory_metrics",
            "debug",
            "log_multimodal",
            "log_unique_prompts",
        ],
        _LOGGING,
    ),
    **dict.fromkeys(
        [
            "use_vllm",
            "vllm_mode",
            "vllm_model_impl",
            "vllm_server_base_url",
            "vllm_server_host",
            "vllm_server_port",
            "vllm_server_timeout",
            "vllm_group_port",
            "vllm_tensor_parallel_size",
            "use_transformers_continuous_batching",
            "transformers_continuous_batching_config",
            "use_transformers_paged",
            "cache_implementation",
        ],
        _TRL_VLLM,
    ),
    **dict.fromkeys(["trackio_space_id", "trackio_bucket_id", "trackio_static_space_id", "project"], _TRACKIO),
    "run_name": "the run is named by output_dir",
    "do_train": "train() trains",
    "save_only_model": "checkpoints always hold what an exact resume needs (adapter, AdamW, schedule, RNG)",
    "restore_callback_states_from_checkpoint": "callbacks keep no state in rlactors checkpoints",
    "enable_jit_checkpoint": _DISTRIBUTED,
    "full_determinism": "use deterministic_generation: true",
    "tf32": "vLLM and the learner pick their matmul precision from dtype",
    "use_cache": "the learner trains without a KV cache; vLLM generates with its own",
    "torch_empty_cache_steps": "the learner hands cached blocks back when vllm_enable_sleep_mode needs it",
    "gradient_checkpointing_kwargs": "checkpointing is always non-reentrant (gradient_checkpointing: true or unsloth)",
    "model_init_kwargs": "the model is loaded by FastLanguageModel.from_pretrained (its arguments, or model_name here)",
    "trust_remote_code": "models load from their own code in transformers and vLLM only",
    "chat_template_kwargs": "chat prompts go through the tokenizer's chat template as it is",
    "optim_target_modules": "only the LoRA adapter is trained",
    "disable_dropout": "LoRA dropout is lora_dropout (0 by default); the base model is frozen",
    "label_smoothing_factor": "GRPO's loss has no labels to smooth (TRL's GRPOTrainer does not use it either)",
    **dict.fromkeys(
        ["use_liger_kernel", "liger_kernel_config"],
        "Liger's layer kernels only speed TRL's learner up (deprecated there); the loss is the same",
    ),
}

# TRL feature -> its default: accepted at the default, refused otherwise.
NOT_YET: dict[str, Any] = {
    "optim_args": None,
    "torch_compile_backend": None,
    "torch_compile_mode": None,
    "neftune_noise_alpha": None,
    "router_aux_loss_coef": None,
    "cast_lm_head_to_fp32": False,
    "sync_ref_model": False,
    "ref_model_mixup_alpha": 0.6,
    "ref_model_sync_steps": 512,
    "load_best_model_at_end": False,
}

REPORTERS = ("jsonl", "tensorboard", "wandb", "mlflow")
SCHEDULERS = {
    "constant": "constant",
    "constant_with_warmup": "constant",
    "linear": "linear",
    "cosine": "cosine",
    "cosine_with_min_lr": "cosine",  # with lr_scheduler_kwargs' min_lr_rate or min_lr: min_lr_rate
}


class TRLFieldError(ValueError):
    """A TRL field given a value rlactors cannot honour; the message names the field, the value and the fix."""


def translate(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with TRL's names turned into rlactors' (a new dict); warns once about NOT_HERE fields."""
    out = dict(values)
    ignored = sorted(name for name in out if name in NOT_HERE)
    for name in ignored:
        out.pop(name)
    if ignored:
        reasons = "; ".join(f"{name} ({NOT_HERE[name]})" for name in ignored)
        warnings.warn(f"rlactors: these TRL fields have no effect here: {reasons}", UserWarning, stacklevel=4)
    for name, default in NOT_YET.items():
        if name in out and out.pop(name) != default:
            raise TRLFieldError(
                f"{name}={values[name]!r}: rlactors does not implement this TRL feature yet; "
                f"remove it or set {default!r}"
            )
    _batch(out)
    _precision(out)
    _renamed(out)
    _schedule(out)
    if "report_to" in out:
        value = out["report_to"]
        out["report_to"] = _reporters([value] if isinstance(value, str) else ["none"] if value is None else value)
    return out


def _batch(out: dict[str, Any]) -> None:
    """TRL's batch fields -> prompts_per_step, micro_batch_size and num_mini_batches.

    TRL: a generation batch is `generation_batch_size` samples, by default
    per_device_train_batch_size x processes x steps_per_generation; one optimizer step every
    gradient_accumulation_steps micro-batches of per_device_train_batch_size samples, so one
    generation serves steps_per_generation / gradient_accumulation_steps optimizer steps
    (rlactors' num_mini_batches), and TRL's max_steps counts optimizer steps."""
    names = (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "steps_per_generation",
        "generation_batch_size",
    )
    if not any(name in out for name in names):
        return
    given = {name: out.pop(name) for name in names if name in out}
    for ours in ("prompts_per_step", "micro_batch_size", "num_mini_batches"):
        if ours in out:
            raise TRLFieldError(
                f"{ours}={out[ours]!r} given with TRL's {sorted(given)}: give one or the other "
                "(TRL's fields set prompts_per_step, micro_batch_size and num_mini_batches)"
            )
    if given.get("steps_per_generation") and given.get("generation_batch_size"):
        raise TRLFieldError("steps_per_generation and generation_batch_size are both given: give one (TRL's rule)")
    per_device = int(given.get("per_device_train_batch_size") or 8)
    accumulation = int(given.get("gradient_accumulation_steps") or 1)
    group = int(out.get("num_generations", 8))
    learners = max(1, int(out.get("num_learner_workers", 1)))
    samples = given.get("generation_batch_size")
    if samples is None:
        steps = int(given.get("steps_per_generation") or accumulation)
        samples = per_device * learners * steps
        if samples % group:
            per_device = group
            samples = per_device * learners * steps
            warnings.warn(
                f"rlactors: per_device_train_batch_size x gradient_accumulation_steps must be a multiple "
                f"of num_generations ({group}): per_device_train_batch_size raised to {group}, as Unsloth "
                "does",
                UserWarning,
                stacklevel=5,
            )
    elif int(samples) % group:
        raise TRLFieldError(
            f"generation_batch_size={samples} is not a multiple of num_generations={group}: each "
            "prompt needs its whole group; use a multiple"
        )
    optimizer_batch = per_device * learners * accumulation
    if int(samples) % optimizer_batch:
        raise TRLFieldError(
            f"a generated batch of {samples} samples (generation_batch_size, or per_device_train_batch_size x "
            f"learners x steps_per_generation) is not a whole number of optimizer batches of {optimizer_batch} "
            "(per_device_train_batch_size x learners x gradient_accumulation_steps): make steps_per_generation "
            "a multiple of gradient_accumulation_steps"
        )
    out["prompts_per_step"] = int(samples) // group
    out["micro_batch_size"] = per_device
    minis = int(samples) // optimizer_batch
    if minis > 1:
        out["num_mini_batches"] = minis
        if out.get("max_steps") not in (None, -1):
            trl_steps = int(out["max_steps"])
            out["max_steps"] = math.ceil(trl_steps / minis)
            warnings.warn(
                f"rlactors: TRL's max_steps={trl_steps} counts optimizer steps; {minis} of them per generated "
                f"batch make max_steps={out['max_steps']} here (a step: one generated batch)",
                UserWarning,
                stacklevel=5,
            )


def _precision(out: dict[str, Any]) -> None:
    bf16, fp16 = out.pop("bf16", None), out.pop("fp16", None)
    if bf16 and fp16:
        raise TRLFieldError("bf16=True and fp16=True: pick one")
    wanted = "bfloat16" if bf16 else "float16" if fp16 else None
    if wanted is None:
        return
    if out.get("dtype", "auto") not in ("auto", wanted):
        raise TRLFieldError(f"{'bf16' if bf16 else 'fp16'}=True with dtype={out['dtype']!r}: drop one of them")
    out["dtype"] = wanted


def _renamed(out: dict[str, Any]) -> None:
    pairs = {
        "shuffle_dataset": "shuffle",
        "save_total_limit": "keep_last",
        "vllm_gpu_memory_utilization": "gpu_memory_utilization",
        "vllm_max_model_length": "max_seq_length",
        "vllm_importance_sampling_cap": "vllm_importance_sampling_clip_max",
    }
    for trl_name, ours in pairs.items():
        if trl_name in out:
            value = out.pop(trl_name)
            if ours in out and out[ours] != value:
                raise TRLFieldError(f"{trl_name}={value!r} and {ours}={out[ours]!r} set one thing: give one")
            if value is not None:
                out[ours] = value
    if "disable_tqdm" in out:
        disable = out.pop("disable_tqdm")
        if disable is not None:
            out["progress_bar"] = not disable
    strategy = out.pop("save_strategy", None)
    if strategy == "no":
        out["save_steps"] = 0
    elif strategy not in (None, "steps"):
        raise TRLFieldError(f'save_strategy={strategy!r}: rlactors saves every save_steps steps; use "steps" or "no"')
    epochs = out.pop("num_train_epochs", None)
    if epochs is not None and out.get("max_steps", -1) in (-1, None):
        out["max_steps"] = None
        out["num_train_epochs"] = float(epochs)
    elif out.get("max_steps") == -1:
        out["max_steps"] = None  # TRL's "train for num_train_epochs" (its default of 3)
        out["num_train_epochs"] = 3.0


def _schedule(out: dict[str, Any]) -> None:
    name = out.get("lr_scheduler_type")
    if name is not None and not isinstance(name, str):
        name = getattr(name, "value", name)  # transformers' SchedulerType enum
    if name is not None:
        if name not in SCHEDULERS:
            raise TRLFieldError(f"lr_scheduler_type={name!r}: rlactors has {sorted(SCHEDULERS)}; pick one")
        out["lr_scheduler_type"] = SCHEDULERS[name]
    _scheduler_kwargs(name, dict(out.pop("lr_scheduler_kwargs", None) or {}), out)
    ratio = out.pop("warmup_ratio", None)
    if ratio:
        if out.get("warmup_steps"):
            raise TRLFieldError(f"warmup_ratio={ratio} and warmup_steps={out['warmup_steps']}: give one")
        out["warmup_steps"] = float(ratio)
    steps = out.get("warmup_steps")
    if isinstance(steps, float) and steps.is_integer() and steps >= 1:
        out["warmup_steps"] = int(steps)


def _scheduler_kwargs(name: str | None, kwargs: dict[str, Any], out: dict[str, Any]) -> None:
    """transformers' `lr_scheduler_kwargs`: `cosine_with_min_lr`'s floor (`min_lr_rate`, or `min_lr` over
    learning_rate) and cosine's `num_cycles` at its default of half a cycle; anything else is refused."""
    if name == "cosine_with_min_lr":
        if ("min_lr_rate" in kwargs) == ("min_lr" in kwargs):
            raise TRLFieldError(
                f"lr_scheduler_type='cosine_with_min_lr' with lr_scheduler_kwargs={kwargs}: give one of min_lr_rate "
                "(a fraction of learning_rate) or min_lr, as transformers requires"
            )
        if "min_lr" in kwargs and "learning_rate" not in out:
            raise TRLFieldError("lr_scheduler_kwargs min_lr needs learning_rate given beside it (or give min_lr_rate)")
        rate = kwargs.pop("min_lr_rate", None)
        out["min_lr_rate"] = rate if rate is not None else kwargs.pop("min_lr") / out["learning_rate"]
    if name in ("cosine", "cosine_with_min_lr") and kwargs.get("num_cycles", 0.5) == 0.5:
        kwargs.pop("num_cycles", None)
    if kwargs:
        raise TRLFieldError(
            f"lr_scheduler_kwargs={kwargs} with lr_scheduler_type={name!r}: rlactors takes only "
            "cosine_with_min_lr's min_lr_rate / min_lr (and num_cycles at 0.5); remove the rest"
        )


def _reporters(names: list[Any]) -> list[str]:
    """TRL's report_to ("none", "all", a name or a list) -> rlactors' sinks; metrics.jsonl is always written."""
    wanted = [str(name) for name in names]
    if "none" in wanted:
        return ["jsonl"]
    if "all" in wanted:
        return list(REPORTERS)
    unknown = sorted(set(wanted) - set(REPORTERS))
    if unknown:
        warnings.warn(
            f"rlactors: report_to {unknown} are not supported here ({_TRACKIO}); skipped", UserWarning, stacklevel=5
        )
    return ["jsonl", *[name for name in wanted if name in REPORTERS and name != "jsonl"]]


def steps_of(value: float, max_steps: int) -> int:
    """A step count as TRL reads warmup_steps and logging_steps: a count, or below 1 a fraction of max_steps."""
    return math.ceil(value * max_steps) if 0 < value < 1 else int(value)
