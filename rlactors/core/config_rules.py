"""`GRPOConfig`'s errors and its rules over several fields, apart from the field list itself: a
`ConfigError` whose lines name each field, its value and the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig

__all__ = ["ConfigError", "check_consistent", "format_errors"]


class ConfigError(ValueError):
    """A config that cannot run; the message names each field, its value and the fix."""


def check_consistent(cfg: GRPOConfig) -> None:
    """The rules over several fields; a `ValueError` naming the fields, their values and the fix."""
    if cfg.lora_r > cfg.max_lora_rank:
        raise ValueError(
            f"lora_r={cfg.lora_r} exceeds max_lora_rank={cfg.max_lora_rank}: "
            f"raise max_lora_rank to >= {cfg.lora_r} or lower lora_r"
        )
    if cfg.max_prompt_length + cfg.max_completion_length > cfg.max_seq_length:
        raise ValueError(
            f"max_prompt_length ({cfg.max_prompt_length}) + max_completion_length "
            f"({cfg.max_completion_length}) exceeds max_seq_length ({cfg.max_seq_length}): "
            "raise max_seq_length or shorten one of them"
        )
    if cfg.min_lr_rate and cfg.lr_scheduler_type != "cosine":
        raise ValueError(
            f"min_lr_rate={cfg.min_lr_rate} with lr_scheduler_type={cfg.lr_scheduler_type!r}: the floor is the "
            "cosine decay's; set lr_scheduler_type: cosine or min_lr_rate: 0"
        )
    if cfg.cast_lm_head_to_fp32 and "lm_head" in cfg.lora_target_modules:
        raise ValueError(
            "cast_lm_head_to_fp32=true with lm_head in lora_target_modules: a head that carries a LoRA adapter "
            "cannot be cast (TRL's rule); remove lm_head from lora_target_modules or set cast_lm_head_to_fp32: false"
        )
    share = cfg.gpu_memory_utilization
    if cfg.placement == "colocate" and share != "auto" and share >= 1.0:
        raise ValueError(
            f"gpu_memory_utilization={share} with placement: colocate leaves the learner no share "
            "of the GPU: use < 1 (e.g. 0.5) or placement: disaggregate"
        )
    if cfg.reward_weights is not None and cfg.reward_funcs and len(cfg.reward_weights) != len(cfg.reward_funcs):
        raise ValueError(
            f"reward_weights has {len(cfg.reward_weights)} entries but reward_funcs has "
            f"{len(cfg.reward_funcs)}: give one weight per function"
        )
    if cfg.vllm_enable_sleep_mode and cfg.max_staleness:
        raise ValueError(
            "vllm_enable_sleep_mode=true needs max_staleness: 0: with max_staleness 1 generation "
            "runs while the learner trains, so vLLM cannot sleep then; drop one of them"
        )
    if cfg.vllm_enable_sleep_mode and cfg.placement != "colocate":
        raise ValueError(
            "vllm_enable_sleep_mode=true frees the rollout workers' GPUs for learners on the same "
            "GPUs; with placement: disaggregate they share none: use placement: colocate or drop it"
        )
    samples, learners = cfg.prompts_per_step * cfg.num_generations, max(1, cfg.num_learner_workers)
    if samples % (cfg.num_mini_batches * learners):
        raise ValueError(
            f"num_mini_batches={cfg.num_mini_batches} does not split the {samples} samples of a step "
            f"(prompts_per_step x num_generations) evenly over {learners} learner(s): use a divisor of "
            f"{samples // learners}"
        )
    if cfg.epsilon_high is not None and cfg.epsilon_high < cfg.epsilon:
        raise ValueError("epsilon_high must be >= epsilon (or null for the same value)")
    if cfg.max_steps is None and cfg.num_train_epochs is None:
        raise ValueError("max_steps is null and num_train_epochs is not set: give one of them")
    for name in ("warmup_steps", "logging_steps"):
        value = getattr(cfg, name)
        if value >= 1 and not float(value).is_integer():
            raise ValueError(f"{name}={value}: give a whole number of steps, or a fraction below 1")
    if cfg.load_best_model_at_end:
        _check_best_model(cfg)
    if cfg.use_adaptive_entropy and not cfg.entropy_coef_min <= cfg.entropy_coef_max:
        raise ValueError(
            f"entropy_coef_min={cfg.entropy_coef_min} is above entropy_coef_max={cfg.entropy_coef_max}: "
            "the adaptive entropy_coef moves between them; swap them"
        )
    if cfg.loss_type == "vespo" and not cfg.vllm_importance_sampling_mode.startswith("token"):
        raise ValueError(
            f"loss_type vespo needs vllm_importance_sampling_mode token_truncate or token_mask (TRL's rule), "
            f"not {cfg.vllm_importance_sampling_mode}"
        )


def _check_best_model(cfg: GRPOConfig) -> None:
    """transformers' rule: the best model is chosen among checkpoints evaluated at their step."""
    if cfg.eval_strategy != "steps" or not cfg.save_steps:
        raise ValueError(
            f"load_best_model_at_end=true with eval_strategy={cfg.eval_strategy!r} and save_steps={cfg.save_steps}: "
            "the best model is picked among checkpoints evaluated at their step; set eval_strategy: steps and "
            "save_steps to a multiple of eval_steps"
        )
    every = cfg.steps_of(cfg.eval_steps if cfg.eval_steps is not None else cfg.logging_steps)
    if cfg.save_steps % max(every, 1):
        raise ValueError(
            f"load_best_model_at_end=true with save_steps={cfg.save_steps} and evaluations every {every} steps "
            "(eval_steps, default logging_steps): save_steps must be a multiple of it (transformers' rule)"
        )


def format_errors(err: ValidationError, values: dict[str, Any], source: str, fields: dict[str, Any]) -> str:
    """One line per problem: `source: field=value: what is wrong and how to fix it`."""
    lines = []
    for problem in err.errors():
        field = ".".join(str(p) for p in problem["loc"]) or "(config)"
        if problem["type"] == "extra_forbidden":
            near = _closest(field, fields)
            hint = f"; did you mean {near!r}?" if near else "; remove it"
            lines.append(f"{source}: unknown key {field!r}{hint}")
            continue
        if problem["type"] == "missing":
            lines.append(f"{source}: {field} is required: {fields[field].description or ''}")
            continue
        message = problem["msg"].removeprefix("Value error, ")
        if not problem["loc"]:  # a rule over several fields: the message names them
            lines.append(f"{source}: {message}")
            continue
        value = values.get(problem["loc"][0], "(default)")
        lines.append(f"{source}: {field}={value!r}: {message}")
    return "\n".join(lines)


def _closest(name: str, options: Any) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return found[0] if found else None
