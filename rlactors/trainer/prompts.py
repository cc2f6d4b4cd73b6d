"""Prompts: load a dataset, tokenize each prompt once, and serve batches from a resumable position.

A prompt is text (tokenized as is) or a list of chat messages (`apply_chat_template` with
`add_generation_prompt=True`, exactly once). Prompts longer than `max_prompt_length` tokens are
dropped at load with a count, so vLLM never meets one mid-run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LOCAL_FORMATS = (".json", ".jsonl", ".parquet")  # a dataset named by a file of one of these


class DatasetError(ValueError):
    """A dataset that cannot be used; the message says which field and how to fix it."""


def load_rows(
    dataset: Any, split: str, prompt_column: str, config_name: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Rows as dicts from a local .json/.jsonl/.parquet file, a hub id, an HF `Dataset`, an
    `IterableDataset` (its first `limit` rows: the prompts max_steps can use) or a list."""
    if dataset is None:
        raise DatasetError("dataset is not set: give `dataset:` in the config or train_dataset= in Python")
    if isinstance(dataset, str):
        dataset = _load_named(dataset, split, config_name)
    if not hasattr(dataset, "__len__"):  # a stream: read only what the run can draw
        if limit is None:
            raise DatasetError(
                "train_dataset is an IterableDataset (a stream): set max_steps, which bounds "
                "how many of its rows the run reads"
            )
        dataset = itertools.islice(dataset, limit)
    rows = [dict(row) for row in dataset]
    if not rows:
        raise DatasetError("the dataset has no rows")
    _check_column(prompt_column, rows[0])
    return rows


def _check_column(prompt_column: str, columns: Any) -> None:
    if prompt_column not in columns:
        raise DatasetError(
            f"prompt_column={prompt_column!r} is not a column of the dataset (columns: {sorted(columns)}); "
            "set prompt_column to the column that holds the prompts"
        )


def check_local_inputs(model_name: str | None, dataset: Any, prompt_column: str) -> None:
    """A local model folder (`model_name`, None when the caller gave the tokenizer), a local dataset
    file and its prompt column where its first row says, checked in a blink: a run fails on a
    mistyped path or column before it starts Ray, not once its workers are up."""
    from rlactors.loader.model_files import local_model_path

    if model_name is not None:
        local_model_path(model_name)
    if isinstance(dataset, str):
        _check_file(dataset)
    columns = _first_columns(dataset)
    if columns is not None:
        _check_column(prompt_column, columns)


def _first_columns(dataset: Any) -> Any:
    """The columns of a list's first row, of an HF `Dataset`, or of a JSON Lines file's first line;
    None where finding them would mean loading the dataset (hub ids, parquet, streams)."""
    if isinstance(dataset, list | tuple):
        return dataset[0] if dataset and isinstance(dataset[0], dict) else None
    if isinstance(dataset, str):
        if os.path.splitext(dataset)[1].lower() not in (".json", ".jsonl"):
            return None
        with open(dataset, encoding="utf-8") as f:
            line = next((line for line in f if line.strip()), "")
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a JSON array or a pretty-printed file: the load checks it
            return None
        return row if isinstance(row, dict) else None
    names = getattr(dataset, "column_names", None)  # an HF Dataset's; None for most streams
    return names if isinstance(names, list) else None


def _check_file(name: str) -> None:
    if os.path.splitext(name)[1].lower() in LOCAL_FORMATS and not os.path.isfile(name):
        raise DatasetError(f"dataset={name!r}: no such file; fix the path (relative to the working directory)")


def _load_named(name: str, split: str, config_name: str | None) -> Any:
    from datasets import disable_progress_bars, load_dataset

    disable_progress_bars()  # the run's own progress bar is the one that counts

    _check_file(name)
    ext = os.path.splitext(name)[1].lower()
    if ext in LOCAL_FORMATS:
        return load_dataset("parquet" if ext == ".parquet" else "json", data_files=name, split="train")
    try:
        return load_dataset(name, config_name, split=split)
    except Exception as err:
        raise DatasetError(
            f"dataset={name!r} split={split!r} could not be loaded ({type(err).__name__}: {str(err)[:200]}); "
            "pass a local .json/.jsonl/.parquet file or a reachable HF dataset id"
        ) from err


def tokenize_prompt(tokenizer: Any, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer(prompt).input_ids)
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise DatasetError(
                "prompts are chat messages but the tokenizer has no chat template; "
                "use a chat model or give prompts as plain text"
            )
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    raise DatasetError(f"prompt {str(prompt)[:80]!r} is neither text nor a list of {{'role', 'content'}} messages")


@dataclass
class PromptTable:
    """Every usable row with its prompt's token ids."""

    rows: list[dict[str, Any]]
    token_ids: list[list[int]]
    filtered_overlong: int
    fingerprint: str

    @classmethod
    def build(
        cls,
        rows: list[dict[str, Any]],
        tokenizer: Any,
        prompt_column: str,
        max_prompt_length: int,
        render: Callable[[dict[str, Any]], list[int]] | None = None,
    ) -> PromptTable:
        """`render`: a row's prompt ids where the prompt is more than its column (with tools)."""
        kept_rows, kept_ids, dropped = [], [], 0
        for row in rows:
            ids = render(row) if render else tokenize_prompt(tokenizer, row[prompt_column])
            if len(ids) > max_prompt_length:
                dropped += 1
                continue
            kept_rows.append(row)
            kept_ids.append(ids)
        if not kept_rows:
            raise DatasetError(
                f"all {len(rows)} prompts are longer than max_prompt_length={max_prompt_length} tokens; "
                "raise max_prompt_length (and max_seq_length) or shorten the prompts"
            )
        digest = hashlib.sha256(json.dumps(kept_ids).encode()).hexdigest()[:16]
        return cls(kept_rows, kept_ids, dropped, digest)

    def __len__(self) -> int:
        return len(self.rows)


def prompt_table(
    dataset: Any,
    config: Any,
    tokenizer: Any,
    render: Callable[[dict[str, Any]], list[int]] | None,
    limit: int | None = None,
    what: str = "prompts",
) -> PromptTable:
    """`dataset`'s rows (its first `limit`) loaded, rendered, tokenized and length-filtered as
    `config` says; the console says how many were dropped."""
    rows = load_rows(dataset, config.dataset_split, config.prompt_column, config.dataset_config, limit=limit)
    table = PromptTable.build(rows, tokenizer, config.prompt_column, config.max_prompt_length, render)
    if table.filtered_overlong:
        print(
            f"rlactors: dropped {table.filtered_overlong} {what} longer than "
            f"max_prompt_length={config.max_prompt_length} tokens",
            flush=True,
        )
    return table


@dataclass
class PromptSampler:
    """Endless stream of row indices: a seeded permutation per epoch, batches may span epochs.

    Within an epoch no row repeats; `state()` / `restore()` make the stream resumable exactly.
    """

    size: int
    seed: int
    shuffle: bool = True
    epoch: int = 0
    position: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._order = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_batch(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(count - len(out), self.size - self.position)
            out += self._order[self.position : self.position + take]
            self.position += take
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "size": self.size, "seed": self.seed}

    def restore(self, state: dict[str, int]) -> None:
        if state["size"] != self.size:
            raise DatasetError(
                f"the checkpoint was taken on a dataset of {state['size']} usable prompts, this one has "
                f"{self.size}: resume with the same dataset, or start a new output_dir"
            )
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)
