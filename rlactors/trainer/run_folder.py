"""The run folder: resolved config, metrics (JSONL, TensorBoard, W&B/MLflow when installed),
the reward curve, and a console progress bar.
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig

METRICS_FILE = "metrics.jsonl"
EVAL_METRICS_FILE = "eval_metrics.jsonl"  # an evaluation's row (`eval_reward`, ...) at its step
SECRET_HINTS = ("token", "api_key", "secret", "password")


def redact(values: dict[str, Any]) -> dict[str, Any]:
    """Copies `values` with secret-looking keys masked (nothing secret reaches a log or file)."""
    return {k: ("***" if any(h in k.lower() for h in SECRET_HINTS) and v else v) for k, v in values.items()}


class RunRecorder:
    def __init__(self, config: GRPOConfig, resume_step: int = 0, keep_rows: bool = False):
        """Opens the run folder's records; rows after `resume_step` are dropped (redone on resume)
        unless `keep_rows` (an evaluation outside training adds to them)."""
        self.config = config
        self.dir = config.output_dir
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "resolved_config.yaml"), "w") as f:
            f.write(config.to_yaml())
        self.metrics_path = os.path.join(self.dir, METRICS_FILE)
        self.eval_path = os.path.join(self.dir, EVAL_METRICS_FILE)
        until = math.inf if keep_rows else resume_step
        self.rows = self._keep_rows_until(self.metrics_path, until)
        self.eval_rows = self._keep_rows_until(self.eval_path, until)
        self.tensorboard = self._tensorboard() if "tensorboard" in config.report_to else None
        self.wandb = self._wandb() if "wandb" in config.report_to else None
        self.mlflow = self._mlflow() if "mlflow" in config.report_to else None
        self.bar = None
        if config.progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=config.max_steps, initial=resume_step, desc="GRPO", unit="step", dynamic_ncols=True)

    @staticmethod
    def _keep_rows_until(path: str, step: float) -> list[dict[str, Any]]:
        """On resume, keeps the rows up to `step` and drops any later ones (they will be redone)."""
        if not os.path.isfile(path):
            return []
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        kept = [r for r in rows if r.get("step", 0) <= step]
        if len(kept) < len(rows):
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
        return kept

    def _tensorboard(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(os.path.join(self.dir, "tensorboard"))

    def _wandb(self) -> Any:
        try:
            import wandb
        except ImportError:
            print("rlactors: report_to has wandb but it is not installed (pip install wandb); skipping it")
            return None
        return wandb.init(project="rlactors", dir=self.dir, config=redact(self.config.model_dump(mode="json")))

    def _mlflow(self) -> Any:
        try:
            import mlflow
        except ImportError:
            print("rlactors: report_to has mlflow but it is not installed (pip install mlflow); skipping it")
            return None
        mlflow.start_run()
        return mlflow

    def log(self, row: dict[str, Any]) -> bool:
        """Records one step: metrics.jsonl always; the integrations and the console line every
        `logging_steps` steps and at the last. Whether this step was such a logging step."""
        step = int(row["step"])
        self.rows.append(row)
        if "jsonl" in self.config.report_to:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(reward=f"{row['reward']:.3f}", step_s=f"{row['step_time_s']:.1f}")
        every = self.config.steps_of(self.config.logging_steps)
        if step % max(every, 1) and step != self.config.max_steps:
            return False
        self._report(row, step)
        self.write(self.progress_line(row))
        return True

    def log_eval(self, row: dict[str, Any]) -> None:
        """Records one evaluation (`rlactors.trainer.evaluation`): eval_metrics.jsonl, the integrations
        (as `eval/<name>`, transformers' reading of `eval_<name>`) and a console line."""
        step = int(row["step"])
        self.eval_rows.append(row)
        if "jsonl" in self.config.report_to:
            with open(self.eval_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        self._report({k.replace("eval_", "eval/", 1): v for k, v in row.items() if k != "step"}, step)
        shown = " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.endswith("reward") or k.endswith("reward_std"))
        self.write(f"eval after step {step}: {shown} ({self._samples(row)} samples)")

    @staticmethod
    def _samples(row: dict[str, Any]) -> int:
        return sum(int(v) for k, v in row.items() if k.endswith("_samples"))

    def _report(self, row: dict[str, Any], step: int) -> None:
        """The row's finite numbers to TensorBoard, W&B and MLflow (those in report_to)."""
        numbers = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in numbers.items()}, step=step)

    def write(self, text: str) -> None:
        """A console line that leaves the progress bar whole (below it, not glued to it)."""
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    @staticmethod
    def progress_line(row: dict[str, Any]) -> str:
        return (
            f"step {row['step']}: reward={row['reward']:.3f} reward_std={row['reward_std']:.3f} "
            f"loss={row['loss']:.4f} kl={row['kl']:.4f} len={row['completions/mean_length']:.1f} "
            f"mismatch={row['sampling/logprob_mismatch']:.4f} v{row['adapter_version']} "
            f"{row['step_time_s']:.1f}s"
        )

    def plot_rewards(self) -> str | None:
        """Writes reward.png: mean reward per step with a moving average."""
        if not self.rows:
            return None
        try:
            import matplotlib
        except ImportError:
            print("rlactors: matplotlib is not installed; no reward.png (pip install matplotlib)")
            return None

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.rows]
        rewards = [r["reward"] for r in self.rows]
        window = max(1, len(rewards) // 10)
        smooth = [
            sum(rewards[max(0, i - window + 1) : i + 1]) / len(rewards[max(0, i - window + 1) : i + 1])
            for i in range(len(rewards))
        ]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, rewards, ".", alpha=0.5, label="reward (mean over the step's samples)")
        ax.plot(steps, smooth, "-", label=f"moving average ({window} steps)")
        evals = [(r["step"], r["eval_reward"]) for r in self.eval_rows if "eval_reward" in r]
        if evals:
            ax.plot(*zip(*evals), "o-", label="eval_reward (the eval prompts, same seed each time)")
        ax.set_xlabel("step")
        ax.set_ylabel("reward")
        ax.set_title(f"{os.path.basename(self.config.model_name.rstrip('/'))}: GRPO reward")
        ax.legend()
        ax.grid(alpha=0.3)
        path = os.path.join(self.dir, "reward.png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.mlflow is not None:
            self.mlflow.end_run()
