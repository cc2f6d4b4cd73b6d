"""The trainer's evaluations: transformers' `evaluate()`, and those `train()` schedules
(`rlactors.trainer.evaluation` says when they run and what they measure)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlactors.trainer import agent_setup, best_model, checkpoints, evaluation
from rlactors.trainer.metrics import sample_metrics

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig
    from rlactors.trainer.agent_setup import AgentSetup
    from rlactors.trainer.callbacks import Callbacks
    from rlactors.trainer.generation import Generations
    from rlactors.trainer.model_source import ModelSource


class Evaluating:
    """`GRPOTrainer`'s evaluations, over its workers, reward functions and run folder (its
    `_init_ray`, `_start_workers`, `_stop`, `_renderer`, `_load_published`, `_score`, `_advantages`),
    and `load_best_model_at_end`'s part of `train()` (`rlactors.trainer.best_model`)."""

    config: GRPOConfig
    agent: AgentSetup
    callbacks: Callbacks
    generations: Generations
    source: ModelSource
    eval_dataset: Any
    eval_sets: list[evaluation.EvalSet]
    tokenizer: Any
    workers_up: bool
    final_adapter: str | None
    version: int
    rollouts: Any
    learners: Any
    recorder: Any
    reward_functions: list[Any]

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
    ) -> dict[str, Any]:
        """transformers' `evaluate`: the eval prompts (`eval_dataset`, else the trainer's) sampled and
        scored as the evaluations during `train()` are; returns their metrics under `metric_key_prefix`,
        also given to the callbacks and appended to eval_metrics.jsonl. Outside `train()` it starts the
        workers for the call: after `train()` they hold the trained adapter, before it the starting one.
        `ignore_keys` is accepted and unused (no model outputs are compared)."""
        from rlactors.trainer.run_folder import RunRecorder

        data = self.eval_dataset if eval_dataset is None else eval_dataset
        evaluation.check_evaluate(data, self.agent.rollout_func is not None)
        render = self._renderer()  # loads the tokenizer
        sets = evaluation.build_sets(data, self.config, self.tokenizer, render, metric_key_prefix)
        if self.workers_up:  # from a callback during train()
            return self._evaluate(self.callbacks.global_step, sets)
        owns_ray = self._init_ray()
        try:
            self._start_workers()
            if self.final_adapter is not None:  # `train()` ran: its adapter, as the learner left it
                self.rollouts.load_adapter_folder(self.final_adapter, self.version)
            self.recorder = RunRecorder(self.config.model_copy(update={"progress_bar": False}), keep_rows=True)
            return self._evaluate(self.callbacks.global_step, sets)
        finally:
            self._stop(owns_ray)
            self.source.finish(None)  # the caller's engine wakes; its model already holds the adapter

    def _evaluate(self, step: int, sets: list[evaluation.EvalSet] | None = None) -> dict[str, Any]:
        """Each eval set (default the trainer's) sampled under the newest adapter and scored
        (`rlactors.trainer.evaluation`); their metrics together."""
        with_rows = self.agent.spec is not None  # episodes start from rows, single turns from token ids
        metrics: dict[str, Any] = {}
        for eval_set in self.eval_sets if sets is None else sets:
            run = (evaluation.run, eval_set, self.config, self._generate_newest, self._sample_metrics, with_rows)
            row = {"step": step, **self.generations.after_inflight(*run)}
            self.recorder.log_eval(row)
            self.callbacks.evaluated(step, row)
            metrics |= {k: v for k, v in row.items() if k != "step"}
        return metrics

    def _evaluate_scheduled(self, step: int) -> None:
        """An evaluation `train()` schedules; with `load_best_model_at_end`, the best checkpoint so far
        goes on the `TrainerState` (`best_metric`, `best_global_step`, `best_model_checkpoint`)."""
        metrics = self._evaluate(step)
        best_model.check_metric(self.config, metrics)
        best = self._best_checkpoint()
        if best is not None:
            state = self.callbacks.state
            state.best_metric, state.best_global_step, state.best_model_checkpoint = best.value, best.step, best.path

    def _best_checkpoint(self) -> best_model.BestCheckpoint | None:
        found = checkpoints.list_checkpoints(self.config.output_dir)
        return best_model.best_checkpoint(self.config, self.recorder.eval_rows, found)

    def _load_best(self) -> None:
        """With `load_best_model_at_end`, the learners take the best checkpoint's adapter (then final/)."""
        from rlactors.core.adapter import LoRAAdapter

        best = self._best_checkpoint()
        if best is None:
            return
        self.learners.load_adapter(LoRAAdapter.load(best.path))
        self.recorder.write(
            f"rlactors: final/ holds checkpoint-{best.step}, the best by {best.metric}={best.value:.4f} "
            "(load_best_model_at_end)"
        )

    def _generate_newest(self, prompts: list[Any], seed: int, n: int) -> Any:
        self._load_published()  # TRL evaluates the weights as they are
        return self.rollouts.generate(prompts, self.version, seed, n)

    def _sample_metrics(self, rows: list[dict[str, Any]], batch: Any, group: int) -> dict[str, Any]:
        scores = self._score(rows, batch)
        per_function = scores.tensor()
        names = [r.name for r in self.reward_functions]
        environments = agent_setup.environment_names(self.agent.spec, rows)
        return sample_metrics(batch, scores, per_function, self._advantages(per_function, group), names, environments)
