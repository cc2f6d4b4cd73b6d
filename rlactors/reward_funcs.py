"""Built-in reward functions (TRL's signature), used by the examples.

Completions arrive as text, or for chat prompts as `[{"role": "assistant", "content": ...}]`.
"""

from __future__ import annotations

import re
from typing import Any

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def completion_text(completion: Any) -> str:
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def _number(text: str) -> float | None:
    found = NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def exact_answer(prompts: list, completions: list, answer: list, **_: Any) -> list[float]:
    """1.0 when the last number in the completion equals the `answer` column, else 0.0."""
    out = []
    for completion, expected in zip(completions, answer):
        got = _number(completion_text(completion))
        out.append(1.0 if got is not None and abs(got - float(expected)) < 1e-6 else 0.0)
    return out


def number_only(prompts: list, completions: list, **_: Any) -> list[float]:
    """1.0 for a completion that is just a number (the format the prompt asks for), else 0.0."""
    return [1.0 if re.fullmatch(r"\s*-?\d+(?:\.\d+)?\s*\.?\s*", completion_text(c)) else 0.0 for c in completions]


def gsm8k_answer(prompts: list, completions: list, answer: list, **_: Any) -> list[float]:
    """GSM8K: the reference answer follows '####'; 1.0 when the completion's last number matches."""
    refs = [a.split("####")[-1].strip() if isinstance(a, str) else a for a in answer]
    return exact_answer(prompts, completions, refs)
