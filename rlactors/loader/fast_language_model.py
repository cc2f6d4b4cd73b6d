"""`FastLanguageModel`: Unsloth's loader API, built on transformers, PEFT, bitsandbytes and vLLM.

    model, tokenizer = FastLanguageModel.from_pretrained("models/smollm2", load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=16, target_modules=["q_proj", "v_proj"])
    outputs = model.fast_generate(["Hi"], lora_request=model.load_lora())

With `fast_inference=True` the vLLM engine is `model.vllm_engine`. `model.load_lora()` hands vLLM
the adapter as it is in memory now (no disk round-trip); a new version whenever weights changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlactors.loader.fast_state import FastState, attach, state_of
from rlactors.loader.model_files import resolve_model_path

DEFAULT_MODEL = "unsloth/Llama-3.2-1B-Instruct"
CHECKPOINTING_CHOICES = (True, False, "unsloth")
_MODEL_KWARGS = {
    "attn_implementation",
    "revision",
    "trust_remote_code",
    "device_map",
    "cache_dir",
    "low_cpu_mem_usage",
    "local_files_only",
    "subfolder",
    "max_memory",
    "rope_scaling",
}


def _check_args(
    max_seq_length: Any, gpu_memory_utilization: Any, max_lora_rank: Any, use_gradient_checkpointing: Any
) -> None:
    if not isinstance(max_seq_length, int) or isinstance(max_seq_length, bool) or max_seq_length <= 0:
        raise ValueError(f"max_seq_length={max_seq_length!r}: pass a positive int, e.g. 2048.")
    if not isinstance(gpu_memory_utilization, (int, float)) or not 0 < gpu_memory_utilization <= 1:
        raise ValueError(
            f"gpu_memory_utilization={gpu_memory_utilization!r} is outside (0, 1]: it is the share of "
            "GPU memory (of RAM on CPU) given to vLLM; pass e.g. 0.5."
        )
    if not isinstance(max_lora_rank, int) or isinstance(max_lora_rank, bool) or max_lora_rank <= 0:
        raise ValueError(f"max_lora_rank={max_lora_rank!r}: pass a positive int such as 16, 32 or 64.")
    if use_gradient_checkpointing not in CHECKPOINTING_CHOICES:
        raise ValueError(f"use_gradient_checkpointing={use_gradient_checkpointing!r}: pass True, False or 'unsloth'.")


def resolve_dtype(dtype: Any) -> Any:
    """None -> bf16 on a GPU that has it (fp16 otherwise), fp32 on CPU; strings -> torch dtypes."""
    import torch

    if dtype is None:
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, str):
        name = dtype.replace("torch.", "")
        if name in ("bfloat16", "float16", "float32"):
            return getattr(torch, name)
    elif dtype in (torch.bfloat16, torch.float16, torch.float32):
        return dtype
    raise ValueError(f"dtype={dtype!r}: pass None, torch.bfloat16, torch.float16 or torch.float32.")


def _quantization_config(load_in_4bit: bool, dtype: Any) -> Any:
    if not load_in_4bit:
        return None
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            "load_in_4bit=True needs a CUDA GPU: bitsandbytes' CPU 4-bit path has no autograd kernel "
            "and gives wrong log-probs here. Pass load_in_4bit=False to train in full precision on CPU."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ValueError(
            "load_in_4bit=True needs bitsandbytes: `pip install 'rlactors[gpu]'`, or pass load_in_4bit=False."
        ) from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def _split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits `**kwargs` into transformers' `from_pretrained` arguments and vLLM engine arguments."""
    model_kwargs = {k: v for k, v in kwargs.items() if k in _MODEL_KWARGS}
    engine_kwargs = {k: v for k, v in kwargs.items() if k not in _MODEL_KWARGS}
    return model_kwargs, engine_kwargs


def _vllm_dtype(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


class FastLanguageModel:
    """Unsloth's `FastLanguageModel` API. All methods are static, as in Unsloth."""

    @staticmethod
    def from_pretrained(
        model_name: str = DEFAULT_MODEL,
        max_seq_length: int = 2048,
        dtype: Any = None,
        load_in_4bit: bool = True,
        fast_inference: bool = True,
        gpu_memory_utilization: float = 0.5,
        max_lora_rank: int = 64,
        disable_log_stats: bool = True,
        token: str | None = None,
        use_gradient_checkpointing: bool | str = "unsloth",
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """Loads `(model, tokenizer)`; with `fast_inference=True`, `model.vllm_engine` is a vLLM `LLM`.

        `model_name` is a local folder or a hub id. `**kwargs`: transformers loading arguments
        (`attn_implementation`, `revision`, `trust_remote_code`, ...) go to `from_pretrained`;
        the rest go to vLLM's engine (`enforce_eager`, `max_num_seqs`, ...), where an unknown name
        is an error. With `fast_inference=False` an unknown name is an error here.
        """
        _check_args(max_seq_length, gpu_memory_utilization, max_lora_rank, use_gradient_checkpointing)
        torch_dtype = resolve_dtype(dtype)
        quantization = _quantization_config(load_in_4bit, torch_dtype)
        model_kwargs, engine_kwargs = _split_kwargs(kwargs)
        if engine_kwargs and not fast_inference:
            raise TypeError(
                f"from_pretrained got {sorted(engine_kwargs)}, which are vLLM engine arguments but "
                "fast_inference=False builds no engine; remove them or pass fast_inference=True."
            )
        path = resolve_model_path(model_name, token=token)
        tokenizer = load_tokenizer(path)
        engine = None
        if fast_inference:
            engine = load_engine(
                path,
                max_seq_length,
                torch_dtype,
                gpu_memory_utilization,
                max_lora_rank,
                load_in_4bit=load_in_4bit,
                disable_log_stats=disable_log_stats,
                **engine_kwargs,
            )
        model = _load_model(path, torch_dtype, quantization, model_kwargs)
        model.max_seq_length = max_seq_length
        attach(
            model,
            FastState(
                engine=engine,
                tokenizer=tokenizer,
                max_lora_rank=max_lora_rank,
                max_seq_length=max_seq_length,
                model_path=path,
                dtype=torch_dtype,
                load_in_4bit=load_in_4bit,
                gpu_memory_utilization=gpu_memory_utilization,
                gradient_checkpointing=use_gradient_checkpointing,
            ),
        )
        _set_gradient_checkpointing(model, use_gradient_checkpointing)
        return model, tokenizer

    @staticmethod
    def get_peft_model(
        model: Any,
        r: int = 16,
        target_modules: Sequence[str] | str = (
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ),
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        bias: str = "none",
        use_gradient_checkpointing: bool | str = "unsloth",
        random_state: int = 3407,
        **kwargs: Any,
    ) -> Any:
        """Wraps `model` in a PEFT LoRA adapter; the result keeps `vllm_engine` and the fast methods."""
        import torch
        from peft import LoraConfig, get_peft_model

        state = state_of(model)
        if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
            raise ValueError(f"r={r!r}: the LoRA rank must be a positive int, e.g. 16.")
        if state is not None and r > state.max_lora_rank:
            raise ValueError(
                f"r={r} exceeds max_lora_rank={state.max_lora_rank} given to from_pretrained: vLLM "
                f"cannot serve it. Pass max_lora_rank>={r} to from_pretrained, or r<={state.max_lora_rank}."
            )
        if bias != "none":
            raise ValueError(f"bias={bias!r}: vLLM serves LoRA adapters only with bias='none'.")
        for name in ("modules_to_save", "use_dora"):
            if kwargs.get(name):
                raise ValueError(f"{name}={kwargs[name]!r}: vLLM cannot serve such an adapter; leave it unset.")
        if use_gradient_checkpointing not in CHECKPOINTING_CHOICES:
            raise ValueError(
                f"use_gradient_checkpointing={use_gradient_checkpointing!r}: pass True, False or 'unsloth'."
            )
        torch.manual_seed(random_state)
        config = LoraConfig(
            r=r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            bias=bias,
            target_modules=[target_modules] if isinstance(target_modules, str) else list(target_modules),
            task_type="CAUSAL_LM",
            **kwargs,
        )
        if getattr(model, "is_loaded_in_4bit", False):
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        peft_model = get_peft_model(model, config)
        if state is not None:
            state.gradient_checkpointing = use_gradient_checkpointing
            attach(peft_model, state)
        _set_gradient_checkpointing(peft_model, use_gradient_checkpointing)
        return peft_model

    @staticmethod
    def for_inference(model: Any) -> Any:
        """Eval mode, no gradient checkpointing, KV cache on (for HF `generate`)."""
        model.eval()
        _config(model).use_cache = True
        return model

    @staticmethod
    def for_training(model: Any, use_gradient_checkpointing: bool | str = True) -> Any:
        """Train mode; the cache off, as gradient checkpointing requires."""
        model.train()
        _config(model).use_cache = False
        return model


def _config(model: Any) -> Any:
    return model.get_base_model().config if hasattr(model, "get_base_model") else model.config


def load_engine(
    path: str,
    max_seq_length: int,
    dtype: Any,
    gpu_memory_utilization: float,
    max_lora_rank: int,
    load_in_4bit: bool = False,
    disable_log_stats: bool = True,
    deterministic: bool = False,
    sleep_mode: bool = False,
    max_batch: int | None = None,
    mixed_batches: bool = False,
    sampler_warmup: dict[str, Any] | None = None,
    **engine_kwargs: Any,
) -> Any:
    """The vLLM engine of `from_pretrained(fast_inference=True)`, alone (rollout workers use it).
    `max_batch`: the most sequences one generate call runs (CUDA graphs are captured up to it);
    `mixed_batches`: multi-turn episodes, whose returning turns prefill beside others' decodes;
    `sampler_warmup`: the sampling fields of every request the engine will get (None: any)."""
    from rlactors.engine import vllm_engine

    spec = vllm_engine.EngineSpec(
        model_path=path,
        max_seq_length=max_seq_length,
        gpu_memory_utilization=float(gpu_memory_utilization),
        max_lora_rank=max_lora_rank,
        disable_log_stats=disable_log_stats,
        dtype=_vllm_dtype(dtype),
        load_in_4bit=load_in_4bit,
        seed=int(engine_kwargs.pop("seed", 0)),
        deterministic=deterministic,
        sleep_mode=sleep_mode,
        max_batch=max_batch,
        mixed_batches=mixed_batches,
        sampler_warmup=sampler_warmup,
    )
    return vllm_engine.create_engine(spec, **engine_kwargs)


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_model(path: str, dtype: Any, quantization: Any, model_kwargs: dict[str, Any]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = dict(model_kwargs)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs.setdefault("device_map", {"": torch.cuda.current_device()})
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    if quantization is None and torch.cuda.is_available() and "device_map" not in kwargs:
        model = model.to("cuda")
    return model


def _set_gradient_checkpointing(model: Any, mode: bool | str) -> None:
    """True or "unsloth": checkpoint every decoder layer (non-reentrant); False: off.

    "unsloth" keeps the checkpointed layer inputs in pinned host memory instead of on the device
    until the backward pass needs them (`rlactors.loader.offload`).
    """
    if not mode:
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    _config(model).use_cache = False
    if mode == "unsloth":
        from rlactors.loader.offload import offloaded_checkpoint

        for layer in decoder_layers(model):
            layer._gradient_checkpointing_func = offloaded_checkpoint


def decoder_layers(model: Any) -> list[Any]:
    """The model's decoder layers: the modules transformers checkpoints one by one."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def compile_layers(model: Any, backend: str = "inductor", mode: str | None = None) -> int:
    """torch.compile each decoder layer in place (regional compilation: the layers share one graph,
    so it compiles once, not once per layer); how many were compiled. Fuses the elementwise work
    around the matmuls (norms, activations, rotary, residual and LoRA adds) that runs unfused."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(backend=backend, mode=mode)
    return len(layers)


def keep_inputs_in_base_dtype(model: Any, keep: bool = True) -> None:
    """Stops PEFT's LoRA layers from casting their inputs to the adapter's float32 (autocast
    picks the matmul dtype instead); what `peft.helpers.disable_input_dtype_casting` sets.
    `keep=False` restores PEFT's casting, for use outside autocast."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = not keep
