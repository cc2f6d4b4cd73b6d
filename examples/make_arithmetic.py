"""Writes examples/arithmetic.jsonl: addition questions as chat prompts with their answers.

    python examples/make_arithmetic.py
Deterministic (seed 0). Columns: prompt (chat messages), answer (string).
"""

import json
import os
import random


def rows(count: int = 2000, seed: int = 0, low: int = 1, high: int = 20) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        a, b = rng.randint(low, high), rng.randint(low, high)
        question = f"What is {a} + {b}? Reply with only the number."
        out.append({"prompt": [{"role": "user", "content": question}], "answer": str(a + b)})
    return out


if __name__ == "__main__":
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arithmetic.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows())
    print(f"wrote {path}")
