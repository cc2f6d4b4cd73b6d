"""Reward functions: TRL's signature `f(prompts, completions, completion_ids, **kwargs) ->
list[float | None]`, the keywords as TRL passes them: the dataset's other columns (one value per
sample), `log_metric(name, value)` / `log_extra(column, values)`, whose figures come back with the
rewards (the step's row takes each metric's mean; `log_completions`' table, the extra columns),
and `trainer_state` (transformers' `TrainerState`) to a function that names it: unpickling one
imports transformers' trainer (seconds, in each reward process), which the others are spared.

Each function's call for a step runs as its own Ray task (so functions run concurrently and a
hung one can be killed at `reward_timeout_s`). A call that raises is retried sample by sample;
an exception, a timeout, None, NaN or inf leave that sample's reward missing (NaN), counted in
the metrics, never 0. A result of the wrong length is a bug in the function and stops the run.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class RewardError(RuntimeError):
    """A reward function that cannot be used (import, pickling, wrong result length)."""


@dataclass(frozen=True)
class RewardFunction:
    name: str
    fn: Callable[..., Any]


def resolve(spec: str | Callable[..., Any]) -> RewardFunction:
    """A callable (a `RewardModel` among them), or "module:function" importable from the working directory."""
    if callable(spec):
        ship_by_value(getattr(spec, "__module__", None))
        return RewardFunction(getattr(spec, "__name__", type(spec).__name__), spec)
    fn = import_object(spec, "reward_funcs")
    return RewardFunction(spec.split(":", 1)[1], fn)


def import_object(spec: Any, field_name: str) -> Any:
    """The callable "module:attr" names (importable from the working directory), shipped to Ray
    workers by value; the error names `field_name`, the entry and the fix."""
    if not isinstance(spec, str) or ":" not in spec:
        model = " or a reward model's folder (with its config.json)" if field_name == "reward_funcs" else ""
        raise RewardError(f'{field_name} entry {spec!r}: write "module:attr", e.g. "my_module:my_function"{model}')
    module_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise RewardError(
            f"{field_name} entry {spec!r}: cannot import {module_name!r} ({err}); "
            "put the module in the working directory or install it"
        ) from err
    obj = getattr(module, attr, None)
    if not callable(obj):
        raise RewardError(f"{field_name} entry {spec!r}: {module_name} has no callable {attr!r}")
    ship_by_value(module_name)
    return obj


def ship_by_value(module_name: str | None) -> None:
    """Pickle the user's reward module by value: Ray workers need not find it on their path."""
    if not module_name or module_name == "__main__" or module_name.split(".")[0] == "rlactors":
        return
    module = sys.modules.get(module_name)
    if module is None or "site-packages" in (getattr(module, "__file__", "") or ""):
        return
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(module)


def check_picklable(functions: Sequence[RewardFunction]) -> None:
    """Fails at start-up, not mid-step, when a function cannot be sent to a Ray worker."""
    import ray.cloudpickle

    for reward in functions:
        try:
            ray.cloudpickle.dumps(reward.fn)
        except Exception as err:
            raise RewardError(
                f"reward function {reward.name!r} cannot be pickled for Ray ({type(err).__name__}: {err}); "
                "it captures something process-bound (a lock, a file, a CUDA tensor): create that inside "
                "the function, or at module level"
            ) from err


@dataclass
class CallResult:
    """One function's rewards for a step."""

    values: list[float | None]
    errors: int = 0  # samples whose reward is missing because of an exception or a bad value
    timed_out: bool = False
    first_error: str = ""
    seconds: float = 0.0
    metrics: dict[str, list[float]] = field(default_factory=dict)  # by `log_metric`
    extra_columns: dict[str, list[Any]] = field(default_factory=dict)  # by `log_extra`

    def log_metric(self, name: str, value: float) -> None:
        """TRL's `log_metric`: a scalar for this batch; the step's row holds the mean of a name's values."""
        self.metrics.setdefault(name, []).append(float(value))

    def log_extra(self, column: str, values: list[Any]) -> None:
        """TRL's `log_extra`: a column of values, one per sample, for the completions' table."""
        self.extra_columns.setdefault(column, []).extend(values)


def _invoke(
    fn: Callable[..., Any], prompts: list, completions: list, columns: dict[str, list], shared: dict[str, Any]
) -> Any:
    result = fn(prompts=prompts, completions=completions, **columns, **shared)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return result


def _parameters(fn: Callable[..., Any]) -> Any:
    """`fn`'s parameters by name; None for a callable Python cannot inspect."""
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None


def _taking_what_it_names(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` itself where it takes `**kwargs` (TRL's reward functions do) or cannot be inspected; else
    `fn` given only the keywords it names: a function written before a keyword was added keeps working."""
    params = _parameters(fn)
    if params is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn
    return lambda **kwargs: fn(**{k: v for k, v in kwargs.items() if k in params})


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "item"):  # tensors and numpy scalars, on any device
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"reward {value!r} is not a number")
    value = float(value)
    return value if math.isfinite(value) else None


def run_reward(
    name: str,
    fn: Callable[..., Any],
    prompts: list,
    completions: list,
    columns: dict[str, list],
    shared: dict[str, Any] | None = None,
) -> CallResult:
    """Calls `fn` on the whole batch; if it raises, once per sample. Runs inside a Ray task.
    `columns` hold a value per sample; `shared` (`trainer_state`) goes to every call whole."""
    start = time.perf_counter()
    n = len(completions)
    fn = _taking_what_it_names(fn)
    result = CallResult(values=[])
    shared = {**(shared or {}), "log_metric": result.log_metric, "log_extra": result.log_extra}
    batch_error = ""
    try:
        raw: list[Any] = list(_invoke(fn, prompts, completions, columns, shared))
    except Exception:
        batch_error = traceback.format_exc(limit=5)
        result.metrics.clear()
        result.extra_columns.clear()  # what the failed call logged; the calls per sample log again
        raw = [_call_one(fn, prompts, completions, columns, shared, i) for i in range(n)]
    if len(raw) != n:
        raise RewardError(f"reward function {name!r} returned {len(raw)} values for {n} completions")
    for value in raw:
        converted, problem = _convert(value)
        if problem:
            result.errors += 1
            result.first_error = result.first_error or batch_error or problem
        result.values.append(converted)
    result.seconds = time.perf_counter() - start
    return result


@dataclass
class _Failed:
    message: str


def _call_one(
    fn: Callable[..., Any], prompts: list, completions: list, columns: dict[str, list], shared: dict[str, Any], i: int
) -> Any:
    try:
        one_columns = {k: v[i : i + 1] for k, v in columns.items()}
        one = list(_invoke(fn, prompts[i : i + 1], completions[i : i + 1], one_columns, shared))
    except Exception:
        return _Failed(traceback.format_exc(limit=5))
    return one[0] if len(one) == 1 else _Failed(f"returned {len(one)} values for 1 completion")


def _convert(value: Any) -> tuple[float | None, str]:
    """(reward or None, problem); None given by the function itself is no problem."""
    if isinstance(value, _Failed):
        return None, value.message
    try:
        converted = _as_float(value)
    except (TypeError, ValueError) as err:
        return None, str(err)
    if converted is None and value is not None:
        return None, f"non-finite reward {value!r}"
    return converted, ""


@dataclass
class Scores:
    """All functions' rewards for a step."""

    per_function: list[list[float | None]]  # [F][B]
    results: list[CallResult] = field(default_factory=list)
    environment_failures: list[str] = field(default_factory=list)  # episodes whose environment raised

    def without(self, failures: list[str] | None) -> Scores:
        """These scores with every reward of the samples whose `failures` entry is set missing."""
        failed = [i for i, why in enumerate(failures or []) if why]
        if not failed:
            return self
        per_function = [[None if i in failed else v for i, v in enumerate(col)] for col in self.per_function]
        return Scores(per_function, self.results, [failures[i] for i in failed])  # type: ignore[index]

    def tensor(self) -> Any:
        """[B, F] float32, NaN where a reward is missing."""
        import torch

        return torch.tensor(
            [[math.nan if v is None else v for v in col] for col in self.per_function], dtype=torch.float32
        ).T

    def logged_metrics(self) -> dict[str, float]:
        """Each name given to `log_metric` in this batch, with the mean of its values."""
        values: dict[str, list[float]] = {}
        for result in self.results:
            for name, logged in result.metrics.items():
                values.setdefault(name, []).extend(logged)
        return {name: sum(v) / len(v) for name, v in values.items() if v}

    def extra_columns(self) -> dict[str, list[Any]]:
        """The columns given to `log_extra` in this batch (a later function's column of a name wins)."""
        return {name: values for result in self.results for name, values in result.extra_columns.items()}

    def first_error(self) -> str:
        """The last line of the first recorded error of any function (or of an environment)."""
        found = next((r.first_error for r in self.results if r.first_error), None)
        if found:
            return found.strip().splitlines()[-1]
        if self.environment_failures:
            return "an environment raised:\n" + self.environment_failures[0].strip()
        return "none recorded"


def score(
    functions: Sequence[RewardFunction],
    prompts: list,
    completions: list,
    columns: dict[str, list],
    timeout_s: float,
    trainer_state: Callable[[], Any] | None = None,
) -> Scores:
    """Runs every function as a Ray task at once; kills those still running at `timeout_s`.
    `trainer_state` makes the run's `TrainerState` for the functions that name it."""
    import ray

    task = ray.remote(num_cpus=0.1, max_retries=0)(run_reward)
    refs = []
    for f in functions:
        named = "trainer_state" in (_parameters(f.fn) or {})
        shared = {"trainer_state": trainer_state()} if trainer_state and named else None
        refs.append(task.remote(f.name, f.fn, prompts, completions, columns, shared))
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    results = []
    for reward, ref in zip(functions, refs):
        if ref in ready:
            try:
                results.append(ray.get(ref))
                continue
            except ray.exceptions.RayTaskError as err:
                if isinstance(err.cause, RewardError):
                    raise err.cause from None
                raise
        ray.cancel(ref, force=True)
        results.append(
            CallResult(
                values=[None] * len(completions),
                errors=len(completions),
                timed_out=True,
                first_error=f"{reward.name} timed out after {timeout_s}s",
                seconds=timeout_s,
            )
        )
    return Scores(per_function=[r.values for r in results], results=results)
