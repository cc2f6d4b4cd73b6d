"""`GRPOTrainer(model=...)`: what the caller's model decides about the run, and the objects reused.

`model` may be:
- a model from `FastLanguageModel` (with `fast_inference=True`, its vLLM engine too): every loader
  setting is read from it (path, `max_seq_length`, dtype, `load_in_4bit`, `max_lora_rank`,
  `gpu_memory_utilization`, the LoRA config, checkpointing). Unless the config asks for Ray
  workers (`num_rollout_workers` / `num_learner_workers` given), the learner and the rollout
  worker run in the driver process on the caller's own model and engine: no second copy, and the
  caller's model is the trained model. With Ray workers, the caller's engine sleeps on a GPU
  while they train (vLLM level 1), and the final adapter is loaded into the caller's model after.
- a transformers or PEFT model: its path names the model for the workers (PEFT: its LoRA config);
  a PEFT model is trained in place as above, a plain model is wrapped with `peft_config`.
- a model id or folder, with `peft_config` for the LoRA settings, as `model_name`, and TRL's
  `quantization_config` (a 4-bit `BitsAndBytesConfig`) as `load_in_4bit`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from rlactors.core.adapter import LoRAAdapter, export_adapter
from rlactors.core.config import ALL_PROJECTIONS, ConfigError, GRPOConfig
from rlactors.loader.fast_language_model import FastLanguageModel, keep_inputs_in_base_dtype
from rlactors.loader.fast_state import state_of
from rlactors.workers.learner_state import load_adapter_weights

WORKER_FIELDS = ("num_rollout_workers", "num_learner_workers")


@dataclass
class ModelSource:
    updates: dict[str, Any] = field(default_factory=dict)  # GRPOConfig fields the model decides
    model: Any = None  # the caller's PEFT model: trained in place in-process, or given the final adapter after
    engine: Any = None  # the caller's vLLM engine
    in_process: bool = False  # the workers run in the driver on `model` and `engine`
    tokenizer: Any = None
    asleep: bool = False  # the caller's engine sleeps while Ray workers train

    @property
    def workers_engine(self) -> Any:
        """The caller's engine the workers generate with, in this process; None: they start their own."""
        return self.engine if self.in_process else None

    def configure(self, config: GRPOConfig) -> GRPOConfig:
        """`config` with the model's settings; the caller's explicit values for them give way, with a note."""
        explicit = config.model_dump(include=config.model_fields_set)
        overridden = sorted(k for k, v in self.updates.items() if k in explicit and explicit[k] != v)
        if overridden:
            print(
                f"rlactors: the model given to GRPOTrainer sets {overridden}; the config's values give way", flush=True
            )
        return GRPOConfig.from_dict({**explicit, **self.updates}, source="GRPOTrainer(model=...)")

    def starting_adapter(self) -> LoRAAdapter | None:
        """The caller's model's adapter when it is trained (some `lora_B` not zero, as PEFT starts
        them): the run goes on from it, in the learners and in vLLM. None for a fresh adapter."""
        if self.model is None:
            return None
        trained = any("lora_B" in name and bool(p.detach().any()) for name, p in self.model.named_parameters())
        if not trained:
            return None
        state = state_of(self.model)
        return export_adapter(self.model, 0, dtype=state.dtype if state is not None else None)

    def release(self) -> None:
        """Before training with Ray workers: the caller's engine frees its GPU memory for them."""
        if self.engine is not None and not self.in_process:
            from rlactors.engine import vllm_engine

            self.asleep = vllm_engine.sleep(self.engine)

    def finish(self, final_adapter: str | None) -> None:
        """After training: the caller's model holds the final adapter and computes as before."""
        if self.model is None:
            return
        if not self.in_process and final_adapter is not None:
            load_adapter_weights(self.model, LoRAAdapter.load(final_adapter).tensors)
        keep_inputs_in_base_dtype(self.model, keep=False)  # the learner's autocast ends with training
        if self.asleep:
            from rlactors.engine import vllm_engine

            vllm_engine.wake_up(self.engine)
            self.asleep = False


def from_argument(model: Any, peft_config: Any, config: GRPOConfig, quantization_config: Any = None) -> ModelSource:
    """The `ModelSource` of `GRPOTrainer`'s `model` argument (None: the config names the model);
    `quantization_config` loads a named model in 4 bits, as TRL's argument of that name does."""
    if model is None or isinstance(model, str):
        updates = {"model_name": model} if model is not None else {}
        if peft_config is not None:
            updates |= lora_fields(peft_config)
        if quantization_config is not None:
            updates |= quantization_fields(quantization_config)
        return ModelSource(updates=updates)
    if quantization_config is not None:  # TRL ignores it too, with a warning
        warnings.warn(
            "GRPOTrainer(quantization_config=...) is ignored: the model is loaded already; load it in 4 bits "
            "(FastLanguageModel.from_pretrained(..., load_in_4bit=True)) or pass its name instead",
            stacklevel=3,
        )
    if not hasattr(model, "config") or not hasattr(model, "parameters"):
        raise ConfigError(
            f"GRPOTrainer(model={type(model).__name__}): pass a model from FastLanguageModel, a "
            "transformers or PEFT causal LM, or a model id or folder"
        )
    if not hasattr(model, "peft_config"):
        model = _wrap(model, peft_config, config)
    elif peft_config is not None:
        raise ConfigError("GRPOTrainer got peft_config and a model that already has a LoRA adapter: drop peft_config")
    state = state_of(model)
    updates = {**lora_fields(model.peft_config["default"]), **_loader_fields(model, state)}
    in_process = not any(name in config.model_fields_set for name in WORKER_FIELDS)
    if in_process:
        updates |= {"num_rollout_workers": 0, "num_learner_workers": 0}
    engine = state.engine if state is not None else None
    tokenizer = state.tokenizer if state is not None else None
    return ModelSource(updates, model, engine, in_process, tokenizer)


def lora_fields(peft_config: Any) -> dict[str, Any]:
    """GRPOConfig's LoRA fields from a PEFT `LoraConfig`."""
    for name in ("use_dora", "modules_to_save"):
        if getattr(peft_config, name, None):
            raise ConfigError(
                f"peft_config.{name}={getattr(peft_config, name)!r}: vLLM cannot serve such an adapter; leave it unset"
            )
    targets = peft_config.target_modules
    if isinstance(targets, str):
        targets = list(ALL_PROJECTIONS) if targets == "all-linear" else [targets]
    return {
        "lora_r": int(peft_config.r),
        "lora_alpha": int(peft_config.lora_alpha),
        "lora_dropout": float(peft_config.lora_dropout),
        "lora_target_modules": sorted(targets),
    }


def quantization_fields(quantization_config: Any) -> dict[str, Any]:
    """GRPOConfig's fields from a transformers `BitsAndBytesConfig`: 4 bits is `load_in_4bit`, NF4
    (the learner's base, and vLLM's bitsandbytes base beside it; FP4 is loaded as NF4 with a
    warning), computing in the run's `dtype` (bf16 or fp16 given as `bnb_4bit_compute_dtype` sets
    it). Other quantizations are errors."""
    given = f"quantization_config={type(quantization_config).__name__}"
    if not getattr(quantization_config, "load_in_4bit", False):
        raise ConfigError(
            f"{given} without load_in_4bit=True: rlactors loads a base in bitsandbytes' 4-bit NF4 only (the "
            "learner and vLLM both serve LoRA on it); pass BitsAndBytesConfig(load_in_4bit=True) or leave it out"
        )
    quant_type = getattr(quantization_config, "bnb_4bit_quant_type", "nf4")
    if quant_type != "nf4":  # "fp4" is BitsAndBytesConfig's default, given or not
        warnings.warn(
            f"quantization_config.bnb_4bit_quant_type={quant_type!r}: rlactors loads 4-bit bases as NF4, the "
            "format vLLM's bitsandbytes loader makes, so the learner and vLLM share one base; set "
            "bnb_4bit_quant_type='nf4' to say so",
            stacklevel=4,
        )
    fields: dict[str, Any] = {"load_in_4bit": True}
    compute = str(getattr(quantization_config, "bnb_4bit_compute_dtype", None)).removeprefix("torch.")
    if compute in ("bfloat16", "float16"):  # float32 is BitsAndBytesConfig's default when unset
        fields["dtype"] = compute
    return fields


def _loader_fields(model: Any, state: Any) -> dict[str, Any]:
    path = state.model_path if state is not None else _path_of(model)
    if state is None:
        return {"model_name": path, "load_in_4bit": bool(getattr(model, "is_loaded_in_4bit", False))}
    fields = {
        "model_name": path,
        "max_seq_length": state.max_seq_length,
        "dtype": str(state.dtype).removeprefix("torch."),
        "load_in_4bit": state.load_in_4bit,
        "max_lora_rank": state.max_lora_rank,
        "gpu_memory_utilization": state.gpu_memory_utilization,
        "gradient_checkpointing": state.gradient_checkpointing,
    }
    if state.engine is not None:
        fields["vllm_enable_sleep_mode"] = False  # the caller's engine was started without sleep mode
    return fields


def _path_of(model: Any) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    path = getattr(base, "name_or_path", None) or getattr(base.config, "_name_or_path", None)
    if not path:
        raise ConfigError(
            "GRPOTrainer(model=...): the model does not say where it was loaded from "
            "(config._name_or_path); pass its model id or folder as model, with peft_config"
        )
    return path


def _wrap(model: Any, peft_config: Any, config: GRPOConfig) -> Any:
    """A model without an adapter gets one: `peft_config`'s, or the config's LoRA fields."""
    lora = lora_fields(peft_config) if peft_config is not None else {}
    if peft_config is None:
        print(
            f"rlactors: the model has no LoRA adapter and no peft_config was given: training a LoRA adapter of "
            f"rank {config.lora_r} on {config.lora_target_modules} (rlactors trains LoRA adapters only)",
            flush=True,
        )
    return FastLanguageModel.get_peft_model(
        model,
        r=lora.get("lora_r", config.lora_r),
        lora_alpha=lora.get("lora_alpha", config.lora_alpha),
        lora_dropout=lora.get("lora_dropout", config.lora_dropout),
        target_modules=lora.get("lora_target_modules", config.lora_target_modules),
        use_gradient_checkpointing=config.gradient_checkpointing,
        random_state=config.seed,
    )
