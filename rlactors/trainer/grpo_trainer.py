"""`GRPOTrainer`: the driver. Each step reads as its phases:
prompts -> generate -> score -> advantages -> update -> sync -> record.

    trainer = GRPOTrainer(config, reward_funcs=[my_reward], train_dataset=rows)
    result = trainer.train()

Runs on whatever `ray.init()` the caller made, or makes a local one (and shuts it down).
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from rlactors.core.config import GRPOConfig
from rlactors.core.timing import timed
from rlactors.distributed import cluster, scoring
from rlactors.trainer import agent_setup, arguments, checkpoints, evaluation, model_source, rollout_output
from rlactors.trainer.callbacks import Callbacks
from rlactors.trainer.errors import StepChecks, TrainingError
from rlactors.trainer.evaluating import Evaluating
from rlactors.trainer.generation import Generations
from rlactors.trainer.metrics import completions_table, run_summary, step_row, train_output
from rlactors.trainer.prompts import PromptSampler, PromptTable, check_local_inputs, prompt_table
from rlactors.trainer.startup import StartupClock, import_start_modules, import_vllm
from rlactors.trainer.trainer_api import TrainerAPI, TrainResult

log = logging.getLogger(__name__)


class GRPOTrainer(Evaluating, TrainerAPI):
    """TRL's call shape, or rlactors' first one:

        GRPOTrainer(model=model, reward_funcs=[f], args=GRPOConfig(...), train_dataset=ds,
                    processing_class=tokenizer, peft_config=lora, callbacks=[...]).train()
        GRPOTrainer(config, reward_funcs=[f], train_dataset=rows).train()   # config: GRPOConfig, dict or YAML

    `model` is a `FastLanguageModel` model, a transformers or PEFT model, or a model id or folder
    (`rlactors.trainer.model_source` says what each means); without it the config's `model_name`
    is loaded. After `train()` a given model holds the trained adapter.
    """

    def __init__(
        self,
        model: Any = None,
        reward_funcs: Any = None,
        args: GRPOConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: Sequence[Any] | None = None,
        optimizers: Any = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
        tools: Sequence[Any] | None = None,
        rollout_func: Any = None,
        environment_factory: Any = None,
        *,
        config: GRPOConfig | dict | str | None = None,
    ):
        arguments.refuse_unsupported(optimizers)
        config, model = arguments.config_and_model(model, args, config)
        self.source = model_source.from_argument(model, peft_config, config, quantization_config)
        self.config = self.source.configure(config) if self.source.updates else config
        self.processing_class = processing_class or self.source.tokenizer
        self.agent = agent_setup.resolve(self.config, tools, environment_factory, rollout_func, self.processing_class)
        self.reward_functions, self.reward_weights = arguments.rewards(
            reward_funcs, self.config, self.agent.environment_rewards, reward_processing_classes
        )
        self.callbacks = Callbacks(callbacks, self.config)
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        evaluation.check_schedule(self.config, eval_dataset, self.agent.rollout_func is not None)
        self.eval_sets: list[evaluation.EvalSet] = []  # the eval prompts (`_prepare_prompts`)
        self.version = 0  # the adapter version the rollout workers hold
        self.published = 0  # the newest adapter version exported by the learner
        self.adapter_ref: Any = None
        self.on_device = False  # adapters by CUDA IPC (set at start; see `LearnerGroup.beside`)
        self.generations = Generations(self.config)
        self.checks = StepChecks(self.config.max_reward_error_rate, self.config.max_skipped_steps)
        self.resumed_from: str | None = None
        self.timings: dict[str, float] = {}
        self.clock = StartupClock()
        self.environment_workers: Any = None  # `environment_workers` actors, made at start
        self.prompts: PromptTable | None = None  # the dataset's prompts, tokenized (`_prepare_prompts`)
        self.tokenizer = self.processing_class  # the config's model's when None (`_renderer`)
        self.workers_up = False  # between `_start_workers` and `_stop`
        self.final_adapter: str | None = None  # output_dir/final, once `train()` has written it
        self.vllm_import: Future | None = None  # `train()`'s import of vLLM for this process's engine

    # ---- lifecycle -------------------------------------------------------------------------
    def train(
        self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, ignore_keys_for_eval: Any = None
    ) -> TrainResult:
        """Trains to max_steps. `resume_from_checkpoint` as in transformers' Trainer: True resumes
        from the newest checkpoint in output_dir, a str from that folder; None or False leaves the
        config's own `resume_from_checkpoint`."""
        began = time.perf_counter()
        self.config = arguments.train_config(self.config, resume_from_checkpoint, trial, ignore_keys_for_eval)
        self.clock = StartupClock()
        data = self.train_dataset if self.train_dataset is not None else self.config.dataset
        check_local_inputs(None if self.processing_class else self.config.model_name, data, self.config.prompt_column)
        # while Ray starts here (its processes end with the thread that started them), another thread
        # imports the start's modules, then vLLM if in this process, then loads the prompts
        pool = ThreadPoolExecutor(1, thread_name_prefix="rlactors-prompts")
        imports = pool.submit(import_start_modules)
        own_engine = self.config if self.source.workers_engine is None else None  # children build its LoRA kernels
        self.vllm_import = pool.submit(import_vllm, own_engine) if self.config.num_rollout_workers == 0 else None
        prompts = pool.submit(self._prepare_prompts)
        pool.shutdown(wait=False)
        with self.clock.phase("Ray"):
            owns_ray = self._init_ray()
        final = None
        try:  # their errors are raised here, inside the try that stops Ray
            with self.clock.phase("imports"):  # what is left of them once Ray is up
                imports.result()
                if self.config.max_steps is None:  # from num_train_epochs: the workers need the dataset's length
                    prompts.result()
            start_step = self._start(prompts)
            self.callbacks.train_begin(self.config, start_step, model=self.model, processing_class=self.tokenizer)
            step = start_step
            if self.config.eval_on_start:
                self._evaluate_scheduled(step)
            for step in range(start_step + 1, self.config.max_steps + 1):
                stop = self._step(step)
                if evaluation.due(self.config, step, self.steps_per_epoch):
                    self._evaluate_scheduled(step)
                if stop:
                    break  # a callback set control.should_training_stop
            self._load_best()
            final = self.final_adapter = checkpoints.save_final(self.learners.export_adapter(), self.config.output_dir)
            self.callbacks.train_end()
            rows = self.recorder.rows
            loss, metrics = train_output(self.config, rows, start_step, time.perf_counter() - began)
            result = TrainResult(step, loss, metrics, final, rows)
        finally:
            self._stop(owns_ray)
            self.source.finish(final)
        print(run_summary(self.config, final, step), flush=True)
        return result

    def _init_ray(self) -> bool:
        """Joins the caller's Ray, RAY_ADDRESS's cluster or a private local one; whether it started Ray."""
        return cluster.connect()

    def _prepare_prompts(self) -> None:
        """The tokenizer, the dataset's rows rendered and tokenized, the sampler over them, and
        `max_steps` from `num_train_epochs`. Needs no Ray: `train()` runs it while Ray starts."""
        cfg = self.config
        render = self._renderer()
        data = self.train_dataset if self.train_dataset is not None else cfg.dataset
        limit = cfg.max_steps * cfg.prompts_per_step if cfg.max_steps else None  # of a stream
        self.prompts = prompt_table(data, cfg, self.tokenizer, render, limit)
        self.sampler = PromptSampler(len(self.prompts), cfg.seed, cfg.shuffle)
        self.steps_per_epoch = evaluation.steps_per_epoch(len(self.prompts), cfg.prompts_per_step)
        self.eval_sets = evaluation.build_sets(self.eval_dataset, cfg, self.tokenizer, render)
        if cfg.max_steps is None:  # TRL's num_train_epochs
            steps = max(1, math.ceil(cfg.num_train_epochs * len(self.prompts) / cfg.prompts_per_step))
            self.config = cfg = cfg.model_copy(update={"max_steps": steps})
            self.generations.config = cfg
            print(
                f"rlactors: num_train_epochs={cfg.num_train_epochs} over {len(self.prompts)} prompts -> "
                f"max_steps={steps}",
                flush=True,
            )

    def _renderer(self) -> Any:
        """Loads the tokenizer; returns what renders a dataset row into prompt token ids."""
        from rlactors.loader.fast_language_model import load_tokenizer
        from rlactors.loader.model_files import resolve_model_path

        self.tokenizer = self.tokenizer or load_tokenizer(resolve_model_path(self.config.model_name))
        return agent_setup.prompt_renderer(self.agent.spec, self.tokenizer, self.config.prompt_column)

    def _start(self, prompts: Future | None = None) -> int:
        """Starts the workers, resumes, opens the run folder's records; `prompts`: `_prepare_prompts`
        running (awaited once the workers are up), or None to run it first. Returns the step to go on from."""
        from rlactors.trainer.run_folder import RunRecorder

        if prompts is None and self.prompts is None:  # callers that start without train()
            self._prepare_prompts()
        if prompts is not None and prompts.done():
            prompts.result()  # prompts that failed to load fail the run before the workers start
        resume_from = self.resumed_from = checkpoints.resume_path(self.config)
        self._start_workers()
        if prompts is not None:
            with self.clock.phase("prompts"):  # what is left of their load once the workers are up
                prompts.result()
        start_step = self._resume(resume_from) if resume_from else 0
        self.recorder = RunRecorder(self.config, resume_step=start_step)
        return start_step

    def _start_workers(self) -> None:
        """Reserves the placement and starts the learner and rollout workers."""
        from rlactors.distributed.placement import cluster_has_gpus, plan, reserve
        from rlactors.distributed.reward_models import RewardModel
        from rlactors.trainer import launch

        cfg = self.config
        if getattr(self, "rollouts", None) is not None:  # an earlier start's (evaluate() before train())
            self.learners = self.rollouts = None
            gc.collect()  # vLLM ends an in-process engine, and the process's parallel state, when collected
        models = [f.fn for f in self.reward_functions if isinstance(f.fn, RewardModel)]
        layout = plan(cfg, cluster_has_gpus(), reward_models=len(models))
        with self.clock.phase("placement"):
            group = self.placement_group = reserve(layout, cfg.placement_timeout_s, strategy=cfg.placement_strategy)
        self.environment_workers, spec = launch.host_environments(cfg, self.agent)
        with self._timed("startup"):
            workers = launch.start_workers(cfg, layout, group, self.source, spec, self.clock, models, self.vllm_import)
        self.learners, self.rollouts, self.reward_models = workers.learners, workers.rollouts, workers.reward_models
        self.rollouts.republish = self.learners.export_adapter  # if the adapter object is lost
        self.on_device = cfg.adapter_sync == "auto" and self.learners.beside(self.rollouts)
        if self.on_device:
            print("rlactors: adapter sync by CUDA IPC (rollout workers share the learners' GPUs)", flush=True)
        pids = f"rollout workers on pids {workers.rollout_pids}, learners on pids {workers.learner_pids}"
        print(f"rlactors: {pids}", flush=True)
        self.workers_up = True

    def _stop(self, owns_ray: bool) -> None:
        from rlactors.distributed.placement import release

        recorder = getattr(self, "recorder", None)
        if recorder is not None:
            recorder.plot_rewards()
            recorder.close()
        for name in ("rollouts", "learners", "environment_workers", "reward_models"):
            if (group := getattr(self, name, None)) is not None:
                group.shutdown()
        self.generations.close()
        release(getattr(self, "placement_group", None))
        self.workers_up = False
        if owns_ray:
            import ray

            ray.shutdown()

    def _timed(self, phase: str) -> AbstractContextManager[None]:
        return timed(self.timings, phase)

    # ---- one step ----------------------------------------------------------------------------
    def _step(self, step: int) -> bool:
        """One training step; whether a callback asked the run to stop."""
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
            self.generations.launch(
                step + 1, self.sampler, self._generate, self.version
            )  # generates the next batch while this one is scored and trained on
        prepared = self._prepare(batch, step)  # the learners' log-prob passes run while the rewards are scored
        with self._timed("score"):
            scores = self._score(self._batch_rows(indices, batch), batch)
        per_function = scores.tensor()
        adv = self._advantages(per_function)
        names = [r.name for r in self.reward_functions]
        self.checks.rewards(names, adv.rewards, scores, step, self.recorder.write)
        with self._timed("update"):
            metrics = self._update(batch.with_advantages(adv.advantages), step, prepared)
        with self._timed("sync"):
            self._publish(metrics.adapter_version)
            if not cfg.max_staleness:
                self._load_published()
        row = step_row(
            step,
            batch,
            scores,
            per_function,
            adv,
            metrics,
            time.perf_counter() - started,
            self.rollouts,
            names,
            self.timings,
            agent_setup.environment_names(self.agent.spec, self._batch_rows(indices, batch)),
        )
        logged = self.recorder.log(row)
        self.clock.first_step(self.timings, row)
        if logged and cfg.log_completions:
            prompts = [self.prompts.rows[indices[int(p)]][cfg.prompt_column] for p in batch.prompt_index]
            extra = scores.extra_columns()  # what the reward functions gave `log_extra`
            table = completions_table(
                prompts, batch.completions, adv.rewards, adv.advantages, cfg.num_completions_to_print, extra
            )
            self.recorder.write(table)
        self.checks.skipped(metrics.skipped)  # after the row is written: the metrics show the skipped steps
        stop = self.callbacks.step_end(step, row, logged)
        if cfg.save_steps and (step % cfg.save_steps == 0 or step == cfg.max_steps or stop):
            self._save_checkpoint(step)
            self.callbacks.saved(step)
        return stop

    def _next_batch(self, step: int) -> tuple[list[int], Any]:
        return self.generations.take(step, self.sampler, self._generate, self.version)

    def _generate(self, indices: list[int], version: int, seed: int | None) -> Any:
        """The samples of prompts `indices`: token ids to the rollout workers; with tools or
        environments, the rows (the workers run the episodes); with rollout_func, the caller's loop."""
        if self.agent.rollout_func is not None:
            return rollout_output.run(self.agent.rollout_func, self, indices, version)
        if self.agent.spec is not None:
            return self.rollouts.generate([self.prompts.rows[i] for i in indices], version, seed)
        return self.rollouts.generate([self.prompts.token_ids[i] for i in indices], version, seed)

    def vllm_generate(self, prompt_ids: list[list[int]], num_generations: int = 1) -> dict[str, list]:
        """For a `rollout_func`: `num_generations` samples of each prompt (token ids) from the rollout
        workers under the current adapter, as {"prompt_ids", "completion_ids", "logprobs", "text"}
        lists, samples of a prompt next to each other."""
        return rollout_output.unpack(self.rollouts.generate(prompt_ids, self.version, None, num_generations))

    def _advantages(self, per_function: Any, group: int | None = None) -> Any:
        """Group-relative advantages (`algorithm.Advantages`) from the [B, F] rewards (groups of
        `group` samples, default num_generations), as `multi_objective_aggregation` says."""
        from rlactors.core import algorithm  # torch: imported while Ray starts (`import_start_modules`)

        cfg = self.config
        group = group or cfg.num_generations
        if cfg.multi_objective_aggregation == "normalize_then_sum":
            return algorithm.normalized_then_summed(per_function, self.reward_weights, group)
        combined = algorithm.combine_rewards(per_function, self.reward_weights)
        return algorithm.group_advantages(combined, group, cfg.scale_rewards)

    def _batch_rows(self, indices: list[int], batch: Any) -> list[dict[str, Any]]:
        """The dataset row of each sample of `batch` (drawn as prompts `indices`)."""
        return [self.prompts.rows[indices[int(p)]] for p in batch.prompt_index]

    def _score(self, rows: list[dict[str, Any]], batch: Any) -> scoring.Scores:
        """The reward functions on `batch`, whose samples came from `rows` (one per sample)."""
        cfg = self.config
        prompts = [row[cfg.prompt_column] for row in rows]
        completions, columns = agent_setup.reward_inputs(batch, rows, cfg.prompt_column)
        scores = scoring.score(
            self.reward_functions, prompts, completions, columns, cfg.reward_timeout_s, lambda: self.callbacks.state
        )
        if self.environment_workers is not None:
            self.environment_workers.release(batch.environments)
        return scores.without(batch.failures)

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
        with self._timed("sync_load"):  # of `sync`: the rest is the learner's export
            held = self.rollouts.load_adapter(self.adapter_ref)
        if any(v != self.published for v in held):
            raise TrainingError(f"rollout workers hold adapter versions {held} after a sync to {self.published}")
        self.version = self.published

    # ---- checkpoints -------------------------------------------------------------------------
    def _save_checkpoint(self, step: int) -> str:
        cfg, sampler = self.config, self.generations.sampler_state(self.sampler)
        driver = checkpoints.driver_state(step, cfg, self.prompts.fingerprint, sampler)
        best = self._best_checkpoint()  # kept through the rotation, as transformers keeps it
        keep = (self.resumed_from, best and best.path)
        return checkpoints.save(cfg.output_dir, step, cfg.keep_last, keep, self.learners.save_state, driver)

    def _resume(self, path: str) -> int:
        driver = checkpoints.resumable(path, self.config, self.prompts.fingerprint)
        self.sampler.restore(driver["sampler"])
        self._publish(self.learners.load_state(path))
        self._load_published()
        print(f"rlactors: resumed from {path} at step {driver['step']} (adapter version {self.version})", flush=True)
        return int(driver["step"])
