"""Helpers for tests: tiny random models of real architectures with a real tokenizer."""

from rlactors.testing.models import make_tiny_model, smollm2_dir

__all__ = ["make_tiny_model", "smollm2_dir"]
