"""A reward model, run as TRL runs one: a sequence classifier with one label
(`AutoModelForSequenceClassification`) whose first logit scores each prompt + completion.

The texts are TRL's: a conversational sample's prompt and completion messages through the reward
tokenizer's chat template, else the prompt string followed by the completion; tokenized without
special tokens, padded on the right (the model reads its score at the last token that is not padding,
so the pad token is the tokenizer's, its end-of-sequence token where it has none).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from rlactors.core.timing import timed
from rlactors.workers.host import WorkerProcess, worker_log

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig

ROWS_PER_PASS = 32  # texts scored in one forward pass: bounds the activations of long samples


class RewardModelWorker(WorkerProcess):
    def __init__(self, config: GRPOConfig, rank: int, sources: list[tuple[str, Any]]):
        """Loads `sources[rank]`: (a model folder or hub id, its tokenizer or None for the folder's own)."""
        self.config = config
        self.path, self.tokenizer = sources[rank]
        self.model: Any = None
        self.startup: dict[str, float] = {}
        worker_log(config.output_dir, "reward-model", rank)

    def build(self) -> int:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if self.model is not None:
            return os.getpid()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        if self.config.dtype != "auto":
            dtype = getattr(torch, self.config.dtype)
        with timed(self.startup, "model"):
            try:
                self.model = AutoModelForSequenceClassification.from_pretrained(self.path, num_labels=1, dtype=dtype)
                if self.tokenizer is None:
                    self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            except (OSError, ValueError) as err:
                raise ValueError(
                    f"reward_funcs entry {self.path!r}: no reward model loads from it ({err}); give a folder with "
                    'a sequence classifier\'s config.json and weights, a hub id, or a "module:function"'
                ) from err
            self.model.to(device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.get_text_config().pad_token_id = self.tokenizer.pad_token_id
        print(f"rlactors: reward model {self.path} on {device} ({dtype})", flush=True)  # the worker's log
        return os.getpid()

    def score(self, prompts: list[Any], completions: list[Any]) -> list[float]:
        """The model's first logit for each prompt + completion, as TRL computes it."""
        import torch

        self.build()
        texts = [self.text(prompt, completion) for prompt, completion in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        for start in range(0, len(texts), ROWS_PER_PASS):
            inputs = self.tokenizer(
                text=texts[start : start + ROWS_PER_PASS],
                return_tensors="pt",
                padding=True,
                padding_side="right",
                add_special_tokens=False,
            ).to(self.model.device)
            with torch.inference_mode():
                scores += self.model(**inputs).logits[:, 0].float().tolist()
        return scores

    def text(self, prompt: Any, completion: Any) -> str:
        if isinstance(prompt, list):  # conversational: the messages through the chat template
            return self.tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        return prompt + completion
