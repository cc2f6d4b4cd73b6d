"""What a step reports: the metrics row (metrics.jsonl, TensorBoard, `on_log`) and, with
`log_completions`, a table of samples on the console."""

from __future__ import annotations

import math
import os
from typing import Any

from rlactors.agent.episodes import episode_means
from rlactors.distributed.scoring import Scores


def sample_metrics(
    batch: Any,
    scores: Scores,
    per_function: Any,
    adv: Any,
    reward_names: list[str],
    environment_names: list[str] | None = None,
) -> dict[str, Any]:
    """What the samples of a generation say, under TRL's names (`reward`, `reward_std`,
    `rewards/<function>/mean`, `completions/mean_length`, ...): a step's and an evaluation's."""
    import torch

    lengths = batch.loss_mask.sum(-1).float()  # the model's tokens: tool results are not counted, as TRL
    valid = ~torch.isnan(adv.rewards)
    reward = adv.rewards[valid]
    row: dict[str, Any] = {
        "reward": float(reward.mean()) if valid.any() else float("nan"),
        "reward_std": float(adv.group_std.mean()),
        "frac_reward_zero_std": float(adv.zero_std.float().mean()),
        "reward/errors": sum(r.errors for r in scores.results),
        "reward/timeouts": sum(r.timed_out for r in scores.results),
        "completions/mean_length": float(lengths.mean()),
        "completions/min_length": float(lengths.min()),
        "completions/max_length": float(lengths.max()),
        "completions/clipped_ratio": float(batch.truncated.float().mean()),
        **_terminated_lengths(lengths[~batch.truncated.bool()]),
        "num_tokens": int(batch.completion_mask.sum() + batch.prompt_mask.sum()),
    }
    row.update(episode_means(batch.episode_metrics))
    row.update(scores.logged_metrics())  # the reward functions' `log_metric`s, under their names as in TRL
    for name in sorted(set(environment_names or [])):
        chosen = torch.tensor([n == name for n in environment_names]) & valid
        row[f"rewards/environment/{name}/mean"] = float(adv.rewards[chosen].mean()) if chosen.any() else float("nan")
    for i, name in enumerate(reward_names):
        column = per_function[:, i]
        scored = column[~column.isnan()]
        row[f"rewards/{name}/mean"] = float(scored.mean()) if len(scored) else 0.0
        row[f"rewards/{name}/std"] = float(scored.std()) if len(scored) > 1 else 0.0
    return row


def _terminated_lengths(lengths: Any) -> dict[str, float]:
    """TRL's lengths of the completions that ended (not cut at max_completion_length); 0 if none did."""
    ended = len(lengths) > 0
    return {
        "completions/mean_terminated_length": float(lengths.mean()) if ended else 0.0,
        "completions/min_terminated_length": float(lengths.min()) if ended else 0.0,
        "completions/max_terminated_length": float(lengths.max()) if ended else 0.0,
    }


def step_row(
    step: int,
    batch: Any,
    scores: Scores,
    per_function: Any,
    adv: Any,
    metrics: Any,
    seconds: float,
    rollouts: Any,
    reward_names: list[str],
    timings: dict[str, float],
    environment_names: list[str] | None = None,
) -> dict[str, Any]:
    """One step's metrics: its samples' (`sample_metrics`), the update's under TRL's names (`loss`,
    `clip_ratio/...`) and rlactors' own (`rollout/...`, `time/<phase>_s`)."""
    row: dict[str, Any] = {"step": step}
    row.update(sample_metrics(batch, scores, per_function, adv, reward_names, environment_names))
    row.update(
        {
            "loss": metrics.loss,
            "kl": metrics.kl,
            "grad_norm": metrics.grad_norm,
            "learning_rate": metrics.learning_rate,
            "clip_ratio/low_mean": metrics.clip_ratio_low,
            "clip_ratio/high_mean": metrics.clip_ratio_high,
            "clip_ratio/region_mean": metrics.clip_ratio_low + metrics.clip_ratio_high,  # one token is one or the other
            "sampling/logprob_mismatch": metrics.logprob_mismatch,
            "sampling/sampling_logp_difference/mean": metrics.logprob_mismatch,  # TRL's name for the same mean
            "train/skipped": int(metrics.skipped),
            "rollout/redispatches": rollouts.redispatches,
            "rollout/worker_restarts": rollouts.restarts,
            "rollout/adapter_republished": rollouts.republished,
            "adapter_version": metrics.adapter_version,
            "staleness": metrics.staleness,
            "step_time_s": seconds,
        }
    )
    row.update(metrics.extra)
    for phase in ("generate", "sleep", "score", "update", "sync", "sync_load"):
        row[f"time/{phase}_s"] = timings.get(phase, 0.0)
    row["time/generate_vllm_s"] = batch.vllm_seconds  # the rest of generate_s: packing and Ray
    return row


def completions_table(
    prompts: list[Any],
    completions: list[str],
    rewards: Any,
    advantages: Any,
    rows: int | None,
    extra: dict[str, list[Any]] | None = None,
) -> str:
    """Plain text: one line per sample (prompt, completion, reward, advantage, and the reward
    functions' `log_extra` columns), the first `rows` samples."""
    extra = {name: values for name, values in (extra or {}).items() if len(values) == len(completions)}
    lines = [" | ".join(["prompt", "completion", "reward", "advantage", *extra])]
    samples = list(zip(prompts, completions, rewards.tolist(), advantages.tolist()))[:rows]
    for i, (prompt, text, reward, adv) in enumerate(samples):
        shown = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        cells = [_one_line(shown, 60), _one_line(text, 80), f"{reward:.3f}", f"{adv:+.3f}"]
        lines.append(" | ".join(cells + [_one_line(values[i], 40) for values in extra.values()]))
    return "\n".join(lines)


def _one_line(text: Any, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def train_output(
    config: Any, rows: list[dict[str, Any]], start_step: int, runtime_s: float
) -> tuple[float, dict[str, float]]:
    """transformers' `TrainOutput` figures of one `train()` call, which began after `start_step`
    (a resumed run's earlier rows are not its own): the mean loss of its steps, and `train_runtime`,
    `train_samples_per_second` (completions), `train_steps_per_second` and `train_loss`, rounded as
    transformers rounds them."""
    rows = [r for r in rows if r["step"] > start_step]
    losses = [r["loss"] for r in rows if isinstance(r.get("loss"), float | int) and math.isfinite(r["loss"])]
    loss = sum(losses) / len(losses) if losses else 0.0
    runtime_s = max(runtime_s, 1e-9)
    samples = len(rows) * config.prompts_per_step * config.num_generations
    return loss, {
        "train_runtime": round(runtime_s, 4),
        "train_samples_per_second": round(samples / runtime_s, 3),
        "train_steps_per_second": round(len(rows) / runtime_s, 3),
        "train_loss": loss,
    }


def run_summary(config: Any, final_adapter: str, steps: int) -> str:
    """Where a finished run's results are, and the command that serves its adapter with vLLM."""
    out = config.output_dir
    name = os.path.basename(os.path.normpath(out)) or "adapter"
    lines = [
        f"rlactors: trained {steps} steps. Results in {out}/: metrics.jsonl, reward.png, resolved_config.yaml, "
        "checkpoint-<step>/",
        f"  the adapter (a PEFT folder): {final_adapter}",
        f"  serve it: vllm serve {config.model_name} --enable-lora --max-lora-rank {config.max_lora_rank} "
        f"--lora-modules {name}={final_adapter}",
    ]
    if "tensorboard" in config.report_to:
        lines.append(f"  curves: tensorboard --logdir {os.path.join(out, 'tensorboard')}")
    return "\n".join(lines)
