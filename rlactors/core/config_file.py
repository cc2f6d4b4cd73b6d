"""A `GRPOConfig` read from a YAML file, with `KEY=VALUE` overrides (the CLI's `--set`)."""

from __future__ import annotations

import os
from typing import Any

import yaml

from rlactors.core.config import GRPOConfig
from rlactors.core.config_rules import ConfigError


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: write KEY=VALUE, e.g. --set max_steps=5")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_config(path: str, overrides: list[str] | None = None) -> GRPOConfig:
    """Reads a YAML config, applies `KEY=VALUE` overrides, validates."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist: pass the path of a YAML file (see examples/)")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    for text in overrides or []:
        key, value = parse_override(text)
        values[key] = value
    return GRPOConfig.from_dict(values, source=path)
