"""TRL's `GRPOConfig` field names in rlactors' `GRPOConfig`.

Every field of TRL's `GRPOConfig` (its own and those it inherits from transformers'
`TrainingArguments`) is one of:

- a field of rlactors' `GRPOConfig` with the same name and meaning (`learning_rate`, `beta`, ...);
- TRANSLATED: a TRL name that `rlactors.core.trl_translate` turns into rlactors' fields (batch
  sizes, precision, retention, ...);
- NOT_HERE: a field with no meaning in rlactors (distribution, evaluation, the hub, TRL's own vLLM
  server): accepted, and one warning lists those given and says why;
- NOT_YET: a training feature TRL has and rlactors does not: accepted at TRL's default value,
  refused with an error that names the field otherwise (never ignored silently).

`tests/unit/test_trl_fields.py` walks the installed TRL's fields, so a TRL upgrade that adds one
fails there until it is placed here.
"""

from __future__ import annotations

from typing import Any

# TRL name -> what it becomes here (the docs of `trl_translate.translate`).
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
TRACKIO = "rlactors reports to jsonl, tensorboard, wandb and mlflow only"

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
    **dict.fromkeys(["trackio_space_id", "trackio_bucket_id", "trackio_static_space_id", "project"], TRACKIO),
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
    "optim_args": "transformers passes it only to optimizers rlactors does not offer; its AdamW ones (torch's, "
    "bitsandbytes') take adam_beta1, adam_beta2 and adam_epsilon",
    "label_smoothing_factor": "GRPO's loss has no labels to smooth (TRL's GRPOTrainer does not use it either)",
    **dict.fromkeys(
        ["use_liger_kernel", "liger_kernel_config"],
        "Liger's layer kernels only speed TRL's learner up (deprecated there); the loss is the same",
    ),
}

# TRL feature -> its default: accepted at the default, refused otherwise.
NOT_YET: dict[str, Any] = {
    "router_aux_loss_coef": None,
    "sync_ref_model": False,
    "ref_model_mixup_alpha": 0.6,
    "ref_model_sync_steps": 512,
}
