"""What the time before the first step is spent on, said on the console as it goes.

A run's first minute is Ray, the learner's model, vLLM's start (weights, CUDA graphs; torch.compile
in agent runs) and the first step (on a fresh GPU machine, kernels built on first use). Each phase is
announced when it starts and timed when it ends, each group's first worker says where its own
start went (its process and imports, vLLM's import and engine, the learner's model and warm-up),
and the first step's line sums them up, so a slow start shows where it stands instead of a silent
console.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rlactors.core.timing import timed

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig
    from rlactors.engine.worker_env import KernelPrebuild


class StartupClock:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.reported = False

    @contextmanager
    def phase(self, name: str, announce: str | None = None) -> Iterator[None]:
        """Times the block as `name`; prints `announce` first (a phase that may take a while)."""
        if announce:
            print(f"rlactors: {announce} ...", flush=True)
        with timed(self.phases, name):
            yield
        if announce:
            print(f"rlactors: {name} ready in {self.phases[name]:.1f}s", flush=True)

    def workers(self, phases: dict[str, dict[str, float]]) -> None:
        """The first worker of each group: where its start went (`WorkerGroup.startup_phases`)."""
        said = [
            f"{role} {', '.join(f'{name} {seconds:.1f}s' for name, seconds in parts.items())}"
            for role, parts in phases.items()
            if parts
        ]
        if said:
            print(f"rlactors: start-up by worker: {'; '.join(said)}", flush=True)

    def first_step(self, timings: dict[str, float], row: dict | None = None) -> None:
        """Once, after the first step: the seconds since `train()` began, by phase; and of the
        update, the learner's own (its forward and backward passes, its optimizer step)."""
        if self.reported:
            return
        self.reported = True
        parts = [f"{name} {seconds:.1f}s" for name, seconds in self.phases.items()]
        step = ", ".join(f"{k} {timings[k]:.1f}s" for k in ("generate", "update") if k in timings)
        row = row or {}
        if "time/learner_forward_backward_s" in row:
            step += (
                f" (in the learner: forward and backward {row['time/learner_forward_backward_s']:.1f}s, "
                f"optimizer {row.get('time/learner_optimizer_s', 0.0):.1f}s)"
            )
        print(
            f"rlactors: first step done {time.perf_counter() - self.started:.1f}s after start: "
            f"{', '.join(parts)}; the step: {step}",
            flush=True,
        )


# what `GRPOTrainer._start` imports (torch, Ray's actor classes, the workers' modules), some seconds
# on a GPU machine: `train()` imports them beside Ray's start instead of after it
START_MODULES = (
    "rlactors.core.algorithm",
    "rlactors.distributed.placement",
    "rlactors.trainer.launch",
    "rlactors.trainer.run_folder",
)


def import_start_modules() -> None:
    """`START_MODULES`: what the driver needs before it asks for the workers."""
    for name in START_MODULES:
        importlib.import_module(name)


def import_vllm(config: GRPOConfig | None = None) -> KernelPrebuild | None:
    """vLLM, where it runs in this process (`num_rollout_workers: 0`): its import, the longest part of
    a rollout worker's start, then runs beside Ray's start and the learners' load. With `config` (the
    engine is this run's to start), on a machine's first start the children that build vLLM's LoRA
    kernels start before the import, as a rollout actor starts them, and are returned for the engine
    to wait for; not with `gpu_memory_utilization: auto`, whose measure of the learner's free memory
    they would shrink, nor for a hub id (resolved by the worker)."""
    prebuild = None
    if config is not None and config.gpu_memory_utilization != "auto":
        files = importlib.import_module("rlactors.loader.model_files")
        rollout = importlib.import_module("rlactors.workers.rollout")
        prebuild = rollout.start_kernel_prebuild(config, lambda: files.local_model_path(config.model_name))
    importlib.import_module("rlactors.engine.vllm_engine").import_vllm()
    return prebuild
