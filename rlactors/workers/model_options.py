"""TRL's options on the learner's model, applied once it is built (`apply`), as transformers'
`Trainer` and TRL's `GRPOTrainer` apply them: torch.compile with a backend and mode, NEFTune's
noise on the input embeddings, and the LM head in float32."""

from __future__ import annotations

from typing import Any

from rlactors.core.config import GRPOConfig
from rlactors.loader.fast_language_model import compile_layers


def apply(model: Any, cfg: GRPOConfig) -> None:
    """`model` (the learner's PEFT model) changed in place by `torch_compile` (its backend and mode),
    `neftune_noise_alpha` and `cast_lm_head_to_fp32`."""
    if cfg.cast_lm_head_to_fp32:
        cast_lm_head_to_fp32(model)
    embeddings = model.get_input_embeddings()
    if cfg.neftune_noise_alpha is not None and not hasattr(embeddings, "neftune_noise_alpha"):
        embeddings.register_forward_hook(neftune_noise)
    embeddings.neftune_noise_alpha = cfg.neftune_noise_alpha  # read by the hook: a caller's model trained again
    if cfg.torch_compile:
        compile_layers(model, backend=compile_backend(cfg.torch_compile_backend), mode=cfg.torch_compile_mode)


def begin_pass(cfg: GRPOConfig) -> None:
    """Before each forward pass: with `torch_compile_mode: reduce-overhead` the compiled layers replay
    CUDA graphs, and torch's graph trees are told a new pass begins (so a pass without a backward,
    the reference log-probs, does not hold the next one's buffers)."""
    if cfg.torch_compile and cfg.torch_compile_mode == "reduce-overhead":
        import torch

        torch.compiler.cudagraph_mark_step_begin()


def neftune_noise(module: Any, args: Any, output: Any) -> Any:
    """NEFTune, as transformers' `neftune_post_forward_hook` (which TRL's trainer inherits): in
    training mode (the learner's only mode, so every pass) uniform noise in +-alpha / sqrt(sequence
    length x width) on each embedding output; none while the module's alpha is None."""
    import torch

    alpha = module.neftune_noise_alpha
    if alpha is None or not module.training:
        return output
    bound = alpha / (output.size(1) * output.size(2)) ** 0.5
    return output + torch.empty_like(output).uniform_(-bound, bound)


def compile_backend(name: str | None) -> str:
    """A torch.compile backend this process knows (inductor for None, as transformers), or a
    `ValueError` naming the field, the value and those it knows."""
    if name is None:
        return "inductor"
    from torch._dynamo import list_backends

    known = list_backends(exclude_tags=())
    if name not in known:
        raise ValueError(
            f"torch_compile_backend={name!r} is not a torch.compile backend in the learner's process: "
            f"use one of {known}, or null for inductor"
        )
    return name


def cast_lm_head_to_fp32(model: Any) -> None:
    """The LM head's weight in float32 and its projection computed in float32 outside autocast
    (TRL's `cast_lm_head_to_fp32`, the ScaleRL recipe); with tied embeddings, the embedding's
    output stays in the model's dtype."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if getattr(head, "computes_in_fp32", False):
        return  # a caller's model trained again
    head.computes_in_fp32, dtype = True, head.weight.dtype
    head.float()

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            return torch.nn.functional.linear(hidden.float(), head.weight, head.bias)

    head.forward = forward
    if base.config.get_text_config().tie_word_embeddings:
        base.get_input_embeddings().register_forward_hook(lambda module, args, output: output.to(dtype))
