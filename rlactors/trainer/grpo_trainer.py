"""`GRPOTrainer`: the driver. Each step reads as its phases:
prompts -> generate -> score -> advantages -> update -> sync -> record.

    trainer = GRPOTrainer(config, reward_funcs=[my_reward], train_dataset=rows)
    result = trainer.train()

Runs on whatever `ray.init()` the caller made, or makes a local one (and shuts it down).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rlactors.core import algorithm
from rlactors.core.config import ConfigError, GRPOConfig, load_config
from rlactors.distributed import memory, scoring
from rlactors.trainer import checkpoints
from rlactors.trainer.prompts import PromptSampler, PromptTable, load_rows

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run stopped on purpose: the message says why and what to change."""


@dataclass
class InFlight:
    """A generation launched ahead (max_staleness: 1): the step it is for, its prompts, and the
    sampler position before they were drawn (what a checkpoint records)."""

    step: int
    indices: list[int]
    batch: Future
    sampler_state: dict[str, Any]


@dataclass
class TrainResult:
    steps: int
    final_adapter: str
    metrics: list[dict[str, Any]]


class GRPOTrainer:
    def __init__(
        self,
        config: GRPOConfig | dict | str,
        reward_funcs: Sequence[str | Callable] | None = None,
        train_dataset: Any = None,
    ):
        if isinstance(config, str):
            config = load_config(config)
        elif isinstance(config, dict):
            config = GRPOConfig.from_dict(config)
        self.config = config
        specs = list(reward_funcs) if reward_funcs is not None else list(config.reward_funcs)
        if not specs:
            raise ConfigError(
                'reward_funcs is empty: give at least one ("module:function" in YAML, a callable in Python)'
            )
        self.reward_functions = [scoring.resolve(spec) for spec in specs]
        weights = config.reward_weights or [1.0] * len(specs)
        if len(weights) != len(specs):
            raise ConfigError(
                f"reward_weights has {len(weights)} entries for {len(specs)} reward functions: "
                "give one weight per function"
            )
        self.reward_weights = weights
        scoring.check_picklable(self.reward_functions)
        self.train_dataset = train_dataset
        self.version = 0  # the adapter version the rollout workers hold
        self.published = 0  # the newest adapter version exported by the learner
        self.adapter_ref: Any = None
        self.on_device = False  # adapters by CUDA IPC (set at start; see `LearnerGroup.beside`)
        self.inflight: InFlight | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlactors-rollout")
        self.skipped_in_row = 0
        self.resumed_from: str | None = None
        self.timings: dict[str, float] = {}

    # ---- lifecycle -------------------------------------------------------------------------
    def train(self) -> TrainResult:
        owns_ray = self._init_ray()
        try:
            start_step = self._start()
            for step in range(start_step + 1, self.config.max_steps + 1):
                self._step(step)
            final = self._save_final()
            return TrainResult(self.config.max_steps, final, self.recorder.rows)
        finally:
            self._stop(owns_ray)

    def _init_ray(self) -> bool:
        import ray

        if ray.is_initialized():
            return False
        if os.environ.get("RAY_ADDRESS"):  # set by `ray job submit`, or by the user for a cluster
            from rlactors.trainer.security import insecure_address_warning

            warning = insecure_address_warning(os.environ["RAY_ADDRESS"], os.environ)
            if warning:
                print(warning, flush=True)
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        else:  # a private local cluster on loopback, no dashboard
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=True)
        return True

    def _start(self) -> int:
        from rlactors.distributed.groups import LearnerGroup, RolloutGroup
        from rlactors.distributed.placement import cluster_has_gpus, plan, reserve
        from rlactors.loader.fast_language_model import load_tokenizer
        from rlactors.loader.model_files import resolve_model_path
        from rlactors.trainer.run_folder import RunRecorder
        from rlactors.workers.learner import LearnerWorker
        from rlactors.workers.rollout import RolloutWorker

        cfg = self.config
        self.tokenizer = load_tokenizer(resolve_model_path(cfg.model_name))
        rows = load_rows(
            self.train_dataset if self.train_dataset is not None else cfg.dataset,
            cfg.dataset_split,
            cfg.prompt_column,
            cfg.dataset_config,
        )
        self.prompts = PromptTable.build(rows, self.tokenizer, cfg.prompt_column, cfg.max_prompt_length)
        if self.prompts.filtered_overlong:
            print(
                f"rlactors: dropped {self.prompts.filtered_overlong} prompts longer than "
                f"max_prompt_length={cfg.max_prompt_length} tokens",
                flush=True,
            )
        self.sampler = PromptSampler(len(self.prompts), cfg.seed, cfg.shuffle)
        resume_from = self.resumed_from = self._resume_path()
        layout = plan(cfg, cluster_has_gpus())
        self.placement_group = reserve(layout, cfg.placement_timeout_s, strategy=cfg.placement_strategy)
        self.learners = LearnerGroup(LearnerWorker, cfg, layout.learner, self.placement_group)
        with self._timed("startup"):
            learner_pids = self.learners.build()  # first: `gpu_memory_utilization: auto` measures it
            share = memory.share_for_vllm(cfg, self.learners, layout.use_gpus)
            rollout_cfg = cfg.model_copy(update={"gpu_memory_utilization": share})
            self.rollouts = RolloutGroup(
                RolloutWorker, rollout_cfg, layout.rollout, self.placement_group, cfg.max_restarts
            )
            rollout_pids = self.rollouts.build()
        self.rollouts.republish = self.learners.export_adapter  # if the adapter object is lost
        self.on_device = cfg.adapter_sync == "auto" and self.learners.beside(self.rollouts)
        if self.on_device:
            print("rlactors: adapter sync by CUDA IPC (rollout workers share the learners' GPUs)", flush=True)
        print(f"rlactors: rollout workers on pids {rollout_pids}, learners on pids {learner_pids}", flush=True)
        start_step = self._resume(resume_from) if resume_from else 0
        self.recorder = RunRecorder(cfg, resume_step=start_step)
        return start_step

    def _stop(self, owns_ray: bool) -> None:
        from rlactors.distributed.placement import release

        recorder = getattr(self, "recorder", None)
        if recorder is not None:
            recorder.plot_rewards()
            recorder.close()
        for group in (getattr(self, "rollouts", None), getattr(self, "learners", None)):
            if group is not None:
                group.shutdown()
        self.pool.shutdown(wait=True, cancel_futures=True)  # an in-flight generation ends with its actors
        release(getattr(self, "placement_group", None))
        if owns_ray:
            import ray

            ray.shutdown()

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start

    # ---- one step ----------------------------------------------------------------------------
    def _step(self, step: int) -> None:
        cfg = self.config
        started = time.perf_counter()
        self.timings = {k: v for k, v in self.timings.items() if k == "startup"}
        with self._timed("generate"):
            indices, batch = self._next_batch(step)
        if cfg.vllm_enable_sleep_mode:
            with self._timed("sleep"):
                self.rollouts.sleep()  # woken by the adapter load of this step's sync
        with self._timed("sync"):
            self._load_published()  # async: the workers are idle now; they take the last update
        if cfg.max_staleness and step < cfg.max_steps:
            self._launch(step + 1)  # generates the next batch while this one is scored and trained on
        prepared = self._prepare(batch, step)  # the learners' log-prob passes run while the rewards are scored
        with self._timed("score"):
            scores = self._score(indices, batch)
        per_function = scores.tensor()
        combined = algorithm.combine_rewards(per_function, self.reward_weights)
        self._check_reward_errors(combined, scores, step)
        adv = algorithm.group_advantages(combined, cfg.num_generations, cfg.scale_rewards)
        with self._timed("update"):
            metrics = self._update(batch.with_advantages(adv.advantages), step, prepared)
        with self._timed("sync"):
            self._publish(metrics.adapter_version)
            if not cfg.max_staleness:
                self._load_published()
        row = self._row(step, batch, scores, per_function, adv, metrics, time.perf_counter() - started)
        self.recorder.log(row)
        self._check_skipped(metrics)  # after the row is written: the metrics show the skipped steps
        if cfg.save_steps and (step % cfg.save_steps == 0 or step == cfg.max_steps):
            self._save_checkpoint(step)

    def _next_batch(self, step: int) -> tuple[list[int], Any]:
        """This step's prompts and samples: the generation launched ahead, or one made now."""
        if self.inflight is not None:
            launched, self.inflight = self.inflight, None
            if launched.step != step:
                raise RuntimeError(f"generation launched for step {launched.step} taken at step {step}")
            return launched.indices, launched.batch.result()
        indices = self.sampler.next_batch(self.config.prompts_per_step)
        ids = [self.prompts.token_ids[i] for i in indices]
        return indices, self.rollouts.generate(ids, self.version, self._generation_seed(step))

    def _launch(self, step: int) -> None:
        state = self.sampler.state()
        indices = self.sampler.next_batch(self.config.prompts_per_step)
        ids = [self.prompts.token_ids[i] for i in indices]
        future = self.pool.submit(self.rollouts.generate, ids, self.version, self._generation_seed(step))
        self.inflight = InFlight(step, indices, future, state)

    def _generation_seed(self, step: int) -> int | None:
        if not self.config.deterministic_generation:
            return None
        return (self.config.seed * 1_000_003 + step * 10_007) % 2**62

    def _score(self, indices: list[int], batch: Any) -> scoring.Scores:
        cfg = self.config
        rows = [self.prompts.rows[indices[int(p)]] for p in batch.prompt_index]
        prompts = [row[cfg.prompt_column] for row in rows]
        chat = isinstance(prompts[0], list)
        completions = [[{"role": "assistant", "content": text}] if chat else text for text in batch.completions]
        columns = {key: [row[key] for row in rows] for key in rows[0] if key != cfg.prompt_column}
        return scoring.score(self.reward_functions, prompts, completions, columns, cfg.reward_timeout_s)

    def _prepare(self, batch: Any, step: int) -> list[Any]:
        needed = self.config.overlap_scoring and self.config.needs_logprob_passes
        return self.learners.prepare(batch, step) if needed else []

    def _update(self, batch: Any, step: int, prepared: list[Any]) -> Any:
        import ray

        try:
            ray.get(prepared)  # an error of the passes ahead surfaces here, as the update's would
            return self.learners.update(batch, step)
        except ray.exceptions.RayActorError as err:
            raise TrainingError(
                f"the learner actor rlactors/learner-0 died during step {step}; learner state is never rebuilt "
                "from fresh weights, so the run stops. Re-run with resume_from_checkpoint: auto to continue "
                f"from the newest checkpoint in {self.config.output_dir}. Cause: {err}"
            ) from err

    def _check_reward_errors(self, combined: Any, scores: scoring.Scores, step: int) -> None:
        import torch

        missing = float(torch.isnan(combined).float().mean())
        for reward, result in zip(self.reward_functions, scores.results):
            if result.errors:
                print(
                    f"rlactors: step {step}: reward {reward.name!r}: {result.errors} sample(s) without a reward; "
                    f"first: {result.first_error.strip().splitlines()[-1] if result.first_error else '?'}",
                    flush=True,
                )
        if missing > self.config.max_reward_error_rate:
            raise TrainingError(
                f"step {step}: {missing:.0%} of samples have no reward (max_reward_error_rate="
                f"{self.config.max_reward_error_rate}); first error: {scores.first_error()}. Fix the reward "
                "function(s) or raise max_reward_error_rate"
            )

    def _check_skipped(self, metrics: Any) -> None:
        self.skipped_in_row = self.skipped_in_row + 1 if metrics.skipped else 0
        if self.skipped_in_row >= self.config.max_skipped_steps:
            raise TrainingError(
                f"{self.skipped_in_row} steps in a row had a non-finite loss or gradient and were skipped "
                f"(max_skipped_steps={self.config.max_skipped_steps}): lower learning_rate or check the rewards"
            )

    def _publish(self, version: int) -> None:
        """Exports the learner's adapter once per version (one object in the store for all workers,
        or, colocated on GPUs, a CUDA IPC handle per learner)."""
        if version != self.published:
            self.adapter_ref = self.learners.export_adapter(on_device=self.on_device)
            self.published = version

    def _load_published(self) -> None:
        """Every rollout worker loads the newest published adapter from memory."""
        if self.published == self.version:
            return
        held = self.rollouts.load_adapter(self.adapter_ref)
        if any(v != self.published for v in held):
            raise TrainingError(f"rollout workers hold adapter versions {held} after a sync to {self.published}")
        self.version = self.published

    def _sync(self, version: int) -> None:
        self._publish(version)
        self._load_published()

    def _row(
        self, step: int, batch: Any, scores: scoring.Scores, per_function: Any, adv: Any, metrics: Any, seconds: float
    ) -> dict[str, Any]:
        import torch

        lengths = batch.completion_mask.sum(-1).float()
        valid = ~torch.isnan(adv.rewards)
        reward = adv.rewards[valid]
        row: dict[str, Any] = {
            "step": step,
            "reward": float(reward.mean()) if valid.any() else float("nan"),
            "reward_std": float(adv.group_std.mean()),
            "frac_reward_zero_std": float(adv.zero_std.float().mean()),
            "reward/errors": sum(r.errors for r in scores.results),
            "reward/timeouts": sum(r.timed_out for r in scores.results),
            "completions/mean_length": float(lengths.mean()),
            "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()),
            "completions/clipped_ratio": float(batch.truncated.float().mean()),
            "num_tokens": int(batch.completion_mask.sum() + batch.prompt_mask.sum()),
            "loss": metrics.loss,
            "kl": metrics.kl,
            "grad_norm": metrics.grad_norm,
            "learning_rate": metrics.learning_rate,
            "clip_ratio/low_mean": metrics.clip_ratio_low,
            "clip_ratio/high_mean": metrics.clip_ratio_high,
            "sampling/logprob_mismatch": metrics.logprob_mismatch,
            "train/skipped": int(metrics.skipped),
            "rollout/redispatches": self.rollouts.redispatches,
            "rollout/worker_restarts": self.rollouts.restarts,
            "rollout/adapter_republished": self.rollouts.republished,
            "adapter_version": metrics.adapter_version,
            "staleness": metrics.staleness,
            "step_time_s": seconds,
        }
        row.update(metrics.extra)
        for i, reward_fn in enumerate(self.reward_functions):
            column = per_function[:, i]
            row[f"rewards/{reward_fn.name}/mean"] = float(torch.nanmean(column)) if (~column.isnan()).any() else 0.0
        for phase in ("generate", "sleep", "score", "update", "sync"):
            row[f"time/{phase}_s"] = self.timings.get(phase, 0.0)
        row["time/generate_vllm_s"] = batch.vllm_seconds  # the rest of generate_s: packing and Ray
        return row

    # ---- checkpoints -------------------------------------------------------------------------
    def _resume_path(self) -> str | None:
        target = self.config.resume_from_checkpoint
        if target == "auto":
            return checkpoints.latest_checkpoint(self.config.output_dir)
        return target

    def _save_checkpoint(self, step: int) -> str:
        cfg = self.config
        try:
            tmp = checkpoints.temp_dir(cfg.output_dir, step)
            self.learners.save_state(tmp)
            checkpoints.write_json(
                os.path.join(tmp, checkpoints.STATE_DIR, "driver.json"),
                {
                    "step": step,
                    "dataset_fingerprint": self.prompts.fingerprint,
                    # prompts drawn for a generation still in flight are drawn again after a resume
                    "sampler": self.inflight.sampler_state if self.inflight else self.sampler.state(),
                    "num_generations": cfg.num_generations,
                    "prompts_per_step": cfg.prompts_per_step,
                },
            )
        except OSError as err:  # a full disk, a lost mount: the partial folder goes, the previous one stays
            shutil.rmtree(checkpoints.temp_path(cfg.output_dir, step), ignore_errors=True)
            previous = checkpoints.latest_checkpoint(cfg.output_dir)
            raise TrainingError(
                f"could not write checkpoint-{step} to output_dir={cfg.output_dir} ({_os_reason(err)}); the "
                f"previous checkpoint {previous or '(none yet)'} is intact. Free space or point output_dir at a "
                "larger volume, then re-run with resume_from_checkpoint: auto"
            ) from err
        return checkpoints.commit(cfg.output_dir, tmp, step, cfg.keep_last, protect=self.resumed_from)

    def _resume(self, path: str) -> int:
        cfg = self.config
        driver = checkpoints.read_json(os.path.join(path, checkpoints.STATE_DIR, "driver.json"))
        for key in ("num_generations", "prompts_per_step"):
            if driver[key] != getattr(cfg, key):
                raise ConfigError(
                    f"{key}={getattr(cfg, key)} but the checkpoint {path} was trained with "
                    f"{driver[key]}: resume with the same value, or start a new output_dir"
                )
        if driver["dataset_fingerprint"] != self.prompts.fingerprint:
            raise ConfigError(
                f"the dataset differs from the one checkpoint {path} was trained on: resume "
                "with the same dataset, or start a new output_dir"
            )
        self.sampler.restore(driver["sampler"])
        version = self.learners.load_state(path)
        self._sync(version)
        print(f"rlactors: resumed from {path} at step {driver['step']} (adapter version {version})", flush=True)
        return int(driver["step"])

    def _save_final(self) -> str:
        import ray

        adapter = self.learners.export_adapter()
        if isinstance(adapter, ray.ObjectRef):
            adapter = ray.get(adapter)
        return adapter.save(os.path.join(self.config.output_dir, "final"))


def _os_reason(err: BaseException) -> str:
    """The OS error's own words (also when it arrives wrapped by Ray from an actor)."""
    cause = getattr(err, "cause", None) or err
    return getattr(cause, "strerror", None) or str(cause).strip().splitlines()[-1]
