"""A group's prompt computed once for all its samples (`share_prompt_forward`).

A GRPO micro-batch holds several samples of one prompt. Run as rows of their own, each sample
carries the prompt through the model again: with a long prompt (a system prompt, tool schemas) and
short completions, most of the learner's work is the same prompt, recomputed. Here the samples of
a prompt share one packed row: the prompt's real tokens, then each completion's, with a block mask
by which each completion sees the prompt and itself (causally), never another completion, at the
positions it would have alone. Gradients from every completion meet in the prompt's one copy.
The log-probs are those of the rows apart (the same tokens, positions and visible context).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch

from rlactors.core.records import RolloutBatch

MASKABLE = ("sdpa", "eager")  # attention implementations that take a 4D mask as given


@dataclass
class Packed:
    """Rows of [prompt, completion 1, ..., completion k] and where each sample's predictions are."""

    input_ids: torch.Tensor  # [R, L] long, right-padded
    position_ids: torch.Tensor  # [R, L] long: a completion's positions continue its prompt's
    attention_mask: torch.Tensor  # [R, 1, L, L] bool, True where a query position may see a key
    keep: int  # logits of the last `keep` positions are read (the earliest prediction is there)
    row: torch.Tensor  # [B, C] long, the packed row of each sample's prediction of token t
    column: torch.Tensor  # [B, C] long, its position among the kept logits


def completion_logits(model: Any, mb: RolloutBatch, share_prompt: bool) -> torch.Tensor:
    """[B, C, V] logits predicting each completion token of micro-batch `mb` (on the model's device):
    from packed rows where `share_prompt` and some prompt has several samples, else a row per sample."""
    if share_prompt and tokens_saved(mb.prompt_ids, mb.prompt_mask):
        p = pack(mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask)
        out = model(
            input_ids=p.input_ids,
            attention_mask=p.attention_mask,
            position_ids=p.position_ids,
            logits_to_keep=p.keep,
            use_cache=False,
        )
        return out.logits[p.row, p.column]
    ids = torch.cat([mb.prompt_ids, mb.completion_ids], dim=1)
    attention = torch.cat([mb.prompt_mask, mb.completion_mask], dim=1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # real tokens only, as vLLM's for an unpadded prompt
    c = mb.completion_ids.shape[1]
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=c + 1, use_cache=False)
    return out.logits[:, :-1]


def shares_prompt(setting: bool | None, model: Any, device: Any) -> bool:
    """`share_prompt_forward` resolved: None is on for a CPU learner whose attention takes a 4D mask;
    True with one that takes none (FlashAttention's) is an error that says so."""
    attention = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    if setting and attention not in MASKABLE:
        raise ValueError(
            f"share_prompt_forward=True needs attention that takes a 4D mask ({', '.join(MASKABLE)}); the model "
            f"uses {attention!r}: load it with attn_implementation='sdpa' or set share_prompt_forward: null"
        )
    wanted = torch.device(device).type == "cpu" if setting is None else setting
    return wanted and attention in MASKABLE


def runs(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[tuple[int, int]]:
    """[start, stop) of each run of consecutive samples with the same prompt (compared token by token,
    not trusted to `prompt_index`)."""
    changed = ((prompt_ids[1:] != prompt_ids[:-1]) | (prompt_mask[1:] != prompt_mask[:-1])).any(-1)
    bounds = [0, *(changed.nonzero().flatten() + 1).tolist(), prompt_ids.shape[0]]
    return list(itertools.pairwise(bounds))


def tokens_saved(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> int:
    """Prompt tokens not computed again when each run's prompt is computed once."""
    lengths = prompt_mask.sum(-1)
    return int(sum(lengths[a] * (b - a - 1) for a, b in runs(prompt_ids, prompt_mask)))


def pack(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    pad_id: int = 0,
) -> Packed:
    """Packs each run of samples of one prompt into one row (prompts left-padded, completions right-padded)."""
    device = completion_ids.device
    b, c = completion_ids.shape
    rows, positions, spans = [], [], []  # spans: per row, (prompt length, [(sample, start, length)])
    for start, stop in runs(prompt_ids, prompt_mask):
        prompt = prompt_ids[start][prompt_mask[start].bool()]
        ids, pos, parts, at = [prompt], [torch.arange(len(prompt), device=device)], [], len(prompt)
        for i in range(start, stop):
            n = int(completion_mask[i].sum())
            ids.append(completion_ids[i, :n])
            pos.append(torch.arange(len(prompt), len(prompt) + n, device=device))
            parts.append((i, at, n))
            at += n
        rows.append(torch.cat(ids))
        positions.append(torch.cat(pos))
        spans.append((len(prompt), parts))
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long, device=device)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), 1, length, length), dtype=torch.bool, device=device)
    keep = max(length - (p - 1) for p, _ in spans)  # from the earliest prompt end on
    row = torch.zeros((b, c), dtype=torch.long, device=device)
    column = torch.zeros((b, c), dtype=torch.long, device=device)
    for r, (ids, pos, (p, parts)) in enumerate(zip(rows, positions, spans)):
        input_ids[r, : len(ids)] = ids
        position_ids[r, : len(pos)] = pos
        mask[r, 0, :p, :p] = torch.ones(p, p, dtype=torch.bool, device=device).tril()
        for i, at, n in parts:
            mask[r, 0, at : at + n, :p] = True
            mask[r, 0, at : at + n, at : at + n] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
            # token t of sample i is predicted at the position before it: the prompt's last for t = 0
            row[i] = r
            if n:
                predicted_at = torch.arange(at - 1, at + n - 1, device=device)
                predicted_at[0] = p - 1
                column[i, :n] = predicted_at - (length - keep)
        padding = torch.arange(len(ids), length, device=device)
        mask[r, 0, padding, padding] = True  # a padded query sees itself: no row of the softmax is empty
    return Packed(input_ids, position_ids, mask, keep, row, column)
