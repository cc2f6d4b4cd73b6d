"""rlactors: Ray-distributed GRPO with LoRA.

Heavy libraries (torch, vLLM, transformers, Ray) load on first use of a name, never on import.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "FastLanguageModel": "rlactors.loader.fast_language_model",
    "vLLMSamplingParams": "rlactors.engine.vllm_engine",
    "GRPOConfig": "rlactors.core.config",
    "GRPOTrainer": "rlactors.trainer.grpo_trainer",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlactors' has no attribute {name!r}")
