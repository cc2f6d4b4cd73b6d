"""TRL's field names turned into rlactors' `GRPOConfig` fields, by the tables of
`rlactors.core.trl_fields`: the TRANSLATED names rewritten, the NOT_HERE ones dropped with one
warning, the NOT_YET ones refused unless at TRL's default."""

from __future__ import annotations

import math
import warnings
from typing import Any

from rlactors.core.trl_fields import NOT_HERE, NOT_YET, TRACKIO

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
    if out.get("torch_compile_backend") is not None or out.get("torch_compile_mode") is not None:
        out["torch_compile"] = True  # transformers' rule: either one turns torch.compile on
    _batch(out)
    _padding(out)
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


def _padding(out: dict[str, Any]) -> None:
    """TRL's `pad_to_multiple_of` strings: "auto" pads on AWS Neuron only (None here), "none" is None."""
    value = out.get("pad_to_multiple_of")
    if isinstance(value, str):
        if value.lower() in ("auto", "none", "null"):
            out["pad_to_multiple_of"] = None
        elif value.isdigit():
            out["pad_to_multiple_of"] = int(value)


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
            f"rlactors: report_to {unknown} are not supported here ({TRACKIO}); skipped", UserWarning, stacklevel=5
        )
    return ["jsonl", *[name for name in wanted if name in REPORTERS and name != "jsonl"]]


def steps_of(value: float, max_steps: int) -> int:
    """A step count as TRL reads warmup_steps and logging_steps: a count, or below 1 a fraction of max_steps."""
    return math.ceil(value * max_steps) if 0 < value < 1 else int(value)
