"""`GRPOConfig`: the run's typed, frozen, validated configuration (TRL's field names).

Built from keyword arguments or a dict (YAML: `rlactors.core.config_file.load_config`); unknown
keys and bad values are errors that name the field, the value and the fix. Never changed after load.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlactors.core import trl_translate, unsloth_fields
from rlactors.core.config_rules import ConfigError, check_consistent, format_errors

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class GRPOConfig(BaseModel):
    """Every knob of a GRPO run. Field names follow TRL's `GRPOConfig` where TRL has one."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # model and LoRA
    model_name: str = Field("models/smollm2", description="local HF folder or hub id")
    max_seq_length: int = Field(1024, gt=0, description="context limit of vLLM and the learner, tokens")
    load_in_4bit: bool = Field(False, description="bitsandbytes NF4 base for the learner (CUDA only)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bf16 on GPU, fp32 on CPU"
    )
    gpu_memory_utilization: float | Literal["auto"] = Field(
        0.5,
        description="vLLM's share of its GPU (of RAM on CPU); colocated, the learner gets the rest. "
        "auto: measure the learner's need for this batch and give vLLM the rest",
    )
    max_lora_rank: int = Field(64, description="largest LoRA rank vLLM will serve")
    lora_r: int = Field(16, gt=0, description="LoRA rank")
    lora_alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_target_modules: list[str] = Field(default_factory=lambda: list(ALL_PROJECTIONS))
    gradient_checkpointing: bool | Literal["unsloth"] = Field(True, description="learner activation checkpointing")
    torch_compile: bool = Field(False, description="torch.compile the learner's decoder layers (one shared graph)")
    torch_compile_backend: str | None = Field(
        None, description="torch.compile's backend (inductor); sets torch_compile"
    )
    torch_compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = (
        Field(None, description="torch.compile's mode; sets torch_compile")
    )
    neftune_noise_alpha: float | None = Field(
        None, gt=0.0, description="NEFTune: uniform noise of alpha / sqrt(tokens x width) on the learner's embeddings"
    )
    cast_lm_head_to_fp32: bool = Field(False, description="the learner's LM head computes in float32 (ScaleRL)")
    share_prompt_forward: bool | None = Field(
        None,
        description="the learner computes a prompt once for all its samples in a micro-batch (one row, a block "
        "mask; the same log-probs): less work the longer the prompt. None: on CPU learners (not yet measured "
        "on GPUs); needs sdpa or eager attention",
    )
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra vLLM engine arguments")

    # data
    dataset: str | None = Field(
        None,
        description="local .json/.jsonl/.parquet file or HF dataset id; the Python API may pass train_dataset instead",
    )
    dataset_config: str | None = Field(None, description="the HF dataset's configuration name, e.g. 'main'")
    dataset_split: str = "train"
    prompt_column: str = "prompt"
    shuffle: bool = True

    # rewards
    reward_funcs: list[str] = Field(default_factory=list, description='"module:function" importable from cwd')
    reward_weights: list[float] | None = None
    reward_timeout_s: float = Field(60.0, gt=0, description="a reward call past this is killed; its samples get None")
    max_reward_error_rate: float = Field(
        0.5, ge=0.0, le=1.0, description="stop when more than this share of samples lack a reward in a step"
    )

    # tools and environments (multi-turn rollouts; the Python API also takes the objects themselves)
    tools: list[str] = Field(
        default_factory=list, description='"module:function" tools the model may call (TRL\'s `tools`)'
    )
    environment_factory: str | dict[str, str] | None = Field(
        None,
        description='"module:Class" with reset(**row) and tool methods, one instance per rollout; '
        'or {name: "module:Class"}, picked by each row\'s `environment` column',
    )
    rollout_func: str | None = Field(
        None, description='"module:function": rollout_func(prompts, trainer) -> {prompt_ids, completion_ids, logprobs}'
    )
    max_tool_calling_iterations: int | None = Field(
        None, ge=0, description="tool rounds per episode; None: until no call or max_completion_length"
    )
    tool_timeout_s: float = Field(
        30.0, gt=0, description="a tool call past this is stopped; the model gets an error message instead"
    )
    environment_workers: int = Field(
        0, ge=0, description="Ray actors that host the environments (0: in the rollout workers' processes)"
    )
    environment_worker_cpus: float = Field(0.5, ge=0.0, description="CPUs each environment worker reserves")
    max_tool_response_tokens: int = Field(
        256, gt=0, description="a tool result longer than this is cut to it (with a note) before the model reads it"
    )

    # sampling
    num_generations: int = Field(8, description="completions per prompt (the GRPO group)")
    prompts_per_step: int = Field(8, gt=0)
    max_prompt_length: int = Field(
        256,
        gt=0,
        description="longer prompts are dropped at load (default: 256, or max_seq_length - "
        "max_completion_length when only max_seq_length is given)",
    )
    max_completion_length: int = Field(256, gt=0)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, description="sample from the k likeliest tokens; 0 or -1: all")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="drop tokens below min_p x the likeliest's")
    repetition_penalty: float = Field(1.0, gt=0.0, description="vLLM's: > 1 discourages repeated tokens")
    deterministic_generation: bool = Field(
        False,
        description="reseed sampling at every step from (seed, step, worker): a resumed run, or a "
        "generation redone after a fault, draws the same samples; on CUDA vLLM also runs its batch-invariant "
        "kernels (VLLM_BATCH_INVARIANT), since its LoRA kernels otherwise sum in a varying order",
    )
    vllm_structured_outputs_regex: str | None = Field(
        None,
        description="every sample matches this regex (vLLM's structured outputs). vLLM's log-probs are then "
        "those of the masked distribution, so sampling/logprob_mismatch grows with how much the regex forces: "
        "raise max_logprob_mismatch to match",
    )
    generation_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra vLLM SamplingParams fields, e.g. {min_tokens: 256, ignore_eos: true}"
    )

    # optimisation
    learning_rate: float = Field(1e-5, gt=0.0)
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "constant"
    min_lr_rate: float = Field(0.0, ge=0.0, le=1.0, description="cosine: the lr ends at this fraction of learning_rate")
    warmup_steps: float = Field(0, ge=0, description="linear warm-up, optimizer steps; below 1: a fraction of them")
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    optim: Literal[
        "adamw_torch", "adamw_torch_fused", "adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit"
    ] = Field(
        "adamw_torch_fused",  # transformers' default: one kernel for every tensor's update on a GPU
        description="AdamW from torch (fused on CUDA), or bitsandbytes' 8-bit / paged AdamW (CUDA; on CPU: AdamW)",
    )
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    adam_epsilon: float = Field(1e-8, gt=0.0)
    micro_batch_size: int = Field(16, gt=0, description="samples per learner forward/backward")
    pad_to_multiple_of: int | None = Field(
        None, gt=0, description="the learner pads prompts and completions to a multiple of this (TRL's): fewer shapes"
    )
    beta: float = Field(0.0, ge=0.0, description="KL coefficient to the base model (adapter disabled)")
    epsilon: float = Field(0.2, gt=0.0)
    epsilon_high: float | None = Field(None, description="upper clip; defaults to epsilon")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    delta: float | None = Field(
        None, gt=1.0, description="two-sided clipping: the ratio is capped at delta (grpo, bnpo, dr_grpo, dapo, luspo)"
    )
    sapo_temperature_pos: float = Field(1.0, gt=0.0, description="SAPO's gate temperature for positive advantages")
    sapo_temperature_neg: float = Field(1.05, gt=0.0, description="SAPO's gate temperature for negative advantages")
    vespo_k_pos: float = Field(2.0, description="VESPO's gamma shape k for non-negative advantages")
    vespo_lambda_pos: float = Field(3.0, description="VESPO's gamma rate lambda for non-negative advantages")
    vespo_k_neg: float = Field(3.0, description="VESPO's gamma shape k for negative advantages")
    vespo_lambda_neg: float = Field(2.0, description="VESPO's gamma rate lambda for negative advantages")
    use_bias_correction_kl: bool = Field(True, description="multiply the KL term by the importance ratio, as TRL")
    scale_rewards: Literal["group", "batch", "none"] = "group"
    multi_objective_aggregation: Literal["sum_then_normalize", "normalize_then_sum"] = Field(
        "sum_then_normalize",
        description="weighted sum of the rewards then group-normalised, or each reward "
        "group-normalised then summed and batch-normalised (TRL's)",
    )
    importance_sampling_level: Literal["token", "sequence"] = "token"
    num_iterations: int = Field(1, ge=1, description="passes over each generated batch")
    num_mini_batches: int = Field(
        1,
        ge=1,
        description="optimizer steps per pass, each on its own contiguous slice of the batch "
        "(TRL's steps_per_generation / gradient_accumulation_steps)",
    )
    mask_truncated_completions: bool = False
    # TRL's: DeepSeek-V3.2's off-policy sequence mask, e.g. 0.5; the entropy bonus (Skywork-OR1's control);
    # Beyond the 80/20 Rule's token selection (0.2 recommended, 1.0 keeps all; the KL term keeps every token)
    off_policy_mask_threshold: float | None = Field(
        None, gt=0.0, description="drop negative-advantage sequences whose mean KL from vLLM's policy exceeds this"
    )
    entropy_coef: float = Field(0.0, description="the loss less this times the kept tokens' mean entropy")
    use_adaptive_entropy: bool = Field(False, description="entropy_coef moves each optimizer step, on at the target")
    entropy_coef_min: float = Field(0.0, description="use_adaptive_entropy: the lowest entropy_coef")
    entropy_coef_max: float = Field(1.0, description="use_adaptive_entropy: the highest entropy_coef")
    entropy_coef_delta: float = Field(0.005, ge=0.0, description="use_adaptive_entropy: the step of entropy_coef")
    entropy_target: float = Field(0.2, ge=0.0, description="use_adaptive_entropy: the entropy (nats) it aims at")
    top_entropy_quantile: float = Field(
        1.0, ge=0.0, le=1.0, description="the policy term of the top quantile of tokens by entropy only (all learners')"
    )
    max_skipped_steps: int = Field(3, ge=1, description="non-finite steps in a row before the run stops")
    overlap_scoring: bool = Field(
        True,
        description="with beta > 0 or num_iterations > 1: the learners compute the base model's and the old "
        "log-probs while the rewards are scored, instead of after (false: one after the other)",
    )

    # off-policy correction and asynchronous training
    max_staleness: int = Field(
        0,
        ge=0,
        le=1,
        description="0: on-policy; 1: generation of step n+1 overlaps the update of step n, so "
        "the learner trains on samples one adapter version old",
    )
    vllm_importance_sampling_correction: bool = Field(
        True, description="weight each token's loss by pi_learner / pi_vllm (truncated), as TRL does"
    )
    vllm_importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = (
        Field("token_truncate", description="truncate: clip the ratio to [min, max]; mask: zero it outside")
    )
    vllm_importance_sampling_clip_max: float | None = Field(3.0, gt=0.0)
    vllm_importance_sampling_clip_min: float | None = Field(None, ge=0.0)
    vllm_enable_sleep_mode: bool = Field(
        False,
        description="colocated, on-policy: rollout workers free their GPU memory while the learner trains "
        "(vLLM sleep level 1: weights to host memory, KV cache dropped), so the step's peak is the larger phase, "
        "not their sum; costs an offload and a reload per step. CUDA only: on CPU it changes nothing",
    )
    vllm_prebuild_lora_kernels: bool = Field(
        True,
        description="a machine's first start (no LoRA kernels in Triton's cache): child processes build vLLM's LoRA "
        "kernels while vLLM is imported (by each rollout worker, or the driver with num_rollout_workers: 0), not "
        "vLLM one after another as it starts. CUDA only; later starts load them from TRITON_CACHE_DIR",
    )
    vllm_sampler_warmup: Literal["run", "all"] = Field(
        "run",
        description="what vLLM's sampler warms up with as it starts (Triton builds those kernels then): run: this "
        "run's sampling settings, others build on first use; all: every sampling feature (vLLM's own). CUDA only",
    )

    # run
    max_steps: int | None = Field(20, gt=0, description="training steps; null: from num_train_epochs")
    num_train_epochs: float | None = Field(None, gt=0.0, description="with max_steps null: passes over the prompts")
    logging_steps: float = Field(
        1, gt=0, description="console and report_to every N steps (below 1: a share of max_steps); metrics.jsonl: all"
    )
    log_completions: bool = Field(False, description="print a table of prompts, completions and rewards at each log")
    num_completions_to_print: int | None = Field(None, gt=0, description="rows of that table (default: all)")
    eval_strategy: Literal["no", "steps", "epoch"] = Field(
        "no",
        description='evaluate on the trainer\'s eval_dataset: "steps" every eval_steps steps, "epoch" after each '
        "pass over the training prompts (rlactors.trainer.evaluation)",
    )
    eval_steps: float | None = Field(
        None, gt=0, description="eval_strategy steps: every N steps (below 1: share of max_steps); null: logging_steps"
    )
    eval_delay: float = Field(0, ge=0, description="no evaluation before this step (epoch with eval_strategy epoch)")
    eval_on_start: bool = Field(False, description="evaluate once before the first step: the baseline")
    num_generations_eval: int | None = Field(None, ge=1, description="samples of each eval prompt (num_generations)")
    save_steps: int = Field(10, ge=0, description="checkpoint every N steps; 0: only final/")
    load_best_model_at_end: bool = Field(
        False,
        description="final/ takes the checkpoint with the best metric_for_best_model (rlactors.trainer.best_model)",
    )
    metric_for_best_model: str | None = Field(None, description='an evaluation metric; default "reward" (eval_reward)')
    greater_is_better: bool | None = Field(None, description="default: true, or false for a metric ending in loss")
    keep_last: int = Field(3, ge=1)
    output_dir: str = "runs/grpo"
    seed: int = 42
    resume_from_checkpoint: str | None = Field(None, description='None, "auto" or a checkpoint folder')
    report_to: list[Literal["jsonl", "tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["jsonl", "tensorboard"]
    )
    progress_bar: bool = True

    # Ray
    num_rollout_workers: int = Field(
        1, ge=0, description="0: vLLM in the driver process, imported while Ray starts (no restarts)"
    )
    num_learner_workers: int = Field(1, ge=0)
    placement: Literal["colocate", "disaggregate"] = "colocate"
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK",
        description="Ray placement-group strategy for the bundles: SPREAD / STRICT_SPREAD put them on different nodes",
    )
    adapter_sync: Literal["auto", "object_store"] = Field(
        "auto",
        description="auto: a rollout worker on a learner's GPU copies the adapter from it by CUDA IPC "
        "(device to device); others, and every worker with object_store, load its bytes from the Ray object store",
    )
    max_logprob_mismatch: float = Field(0.5, gt=0.0, description="stop when mean |logp_vllm - logp_learner| exceeds it")
    rollout_timeout_s: float = Field(600.0, gt=0, description="watchdog for one generation call")
    max_restarts: int = Field(3, ge=0, description="restarts allowed per rollout actor")
    max_redispatches: int = Field(5, ge=0, description="failed generation attempts redone per step")
    placement_timeout_s: float = Field(60.0, gt=0, description="fail if resources are not granted in time")

    def __init__(self, **values: Any):
        """Keyword construction, as TRL's `GRPOConfig(...)`: errors are `ConfigError`s naming each field."""
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise ConfigError(format_errors(err, values, "GRPOConfig", GRPOConfig.model_fields)) from None

    @model_validator(mode="before")
    @classmethod
    def _trl_names_and_lengths(cls, values: Any) -> Any:
        """TRL's field names turned into rlactors' (`trl_translate`), then the length defaults: given
        max_seq_length, the completion defaults to min(256, half of it) and the prompt to the rest."""
        if not isinstance(values, dict):
            return values
        values = trl_translate.translate(unsloth_fields.translate(values))
        context = values.get("max_seq_length")
        if isinstance(context, int) and "max_prompt_length" not in values:
            values.setdefault("max_completion_length", min(256, context // 2))
            if isinstance(values["max_completion_length"], int):
                values["max_prompt_length"] = max(1, context - values["max_completion_length"])
        return values

    @field_validator("gpu_memory_utilization", mode="before")
    @classmethod
    def _share(cls, value: Any) -> float | str:
        if value == "auto":
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = -1.0
        if not 0.0 < number <= 1.0:
            raise ValueError('must be in (0, 1] (the fraction of GPU memory vLLM may use, e.g. 0.5) or "auto"')
        return number

    @field_validator("max_lora_rank")
    @classmethod
    def _rank(cls, value: int) -> int:
        if value not in VLLM_LORA_RANKS:
            raise ValueError(f"vLLM serves LoRA ranks up to one of {VLLM_LORA_RANKS}; pick one of them")
        return value

    @field_validator("num_generations")
    @classmethod
    def _group(cls, value: int) -> int:
        if value < 2:
            raise ValueError("GRPO's group baseline needs at least 2 completions per prompt; use >= 2, e.g. 8")
        return value

    @field_validator("resume_from_checkpoint")
    @classmethod
    def _resume(cls, value: str | None) -> str | None:
        if value not in (None, "auto") and not os.path.isdir(value):
            raise ValueError('must be null, "auto" or an existing checkpoint folder')
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GRPOConfig:
        check_consistent(self)
        return self

    def steps_of(self, value: float) -> int:
        """A step count given as a count, or below 1 as a fraction of max_steps (TRL's reading of
        warmup_steps and logging_steps)."""
        return trl_translate.steps_of(value, self.max_steps or 1)

    @property
    def needs_logprob_passes(self) -> bool:
        """Whether an update first needs log-probs of the batch under fixed weights: the old policy's
        (num_iterations or num_mini_batches > 1) or the base model's (beta > 0)."""
        return self.needs_old_logprobs or self.beta > 0

    @property
    def needs_old_logprobs(self) -> bool:
        """Whether some optimizer step trains on the batch after another step changed the weights."""
        return self.num_iterations > 1 or self.num_mini_batches > 1

    def sampling_extras(self) -> dict[str, Any]:
        """vLLM SamplingParams fields beyond n, max_tokens, temperature and top_p: TRL's top_k, min_p
        and repetition_penalty, then `generation_kwargs` (which win, as in TRL)."""
        extras = {"top_k": self.top_k, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty}
        # Left out when unset: vLLM's own defaults for them differ between versions.
        unset = {"top_k": (0, -1), "min_p": (None, 0.0), "repetition_penalty": (1.0,)}
        regex = self.vllm_structured_outputs_regex
        regex = {"structured_outputs_regex": regex} if regex else {}
        return {**{k: v for k, v in extras.items() if v not in unset[k]}, **regex, **self.generation_kwargs}

    @property
    def samples_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> GRPOConfig:
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise ConfigError(format_errors(err, values, source, cls.model_fields)) from None
