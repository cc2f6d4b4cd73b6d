"""Environments in Ray actors (`environment_workers: N`): stateful environments live in N
environment workers instead of in the rollout workers' processes, so a heavy or slow environment
(a game server, a browser, a simulator) takes neither the engine's process nor its memory, and
can sit on CPU nodes of the cluster.

The rollout worker's episode holds a `HostedEnvironment`: a handle to one instance in one worker.
Its `reset(**row)` makes and resets the instance there; its tools are async functions with the
class's own schema that call the instance's methods there (an episode waiting on one does not
hold back the others); reward functions read it as the environment itself (`env.get_reward()`,
`env.tries`), each access one call to the worker. The driver drops the instances of a batch once
its rewards are scored (`EnvironmentWorkers.release`).

An environment worker that dies fails the calls in flight (those episodes end as failed, counted,
without a reward); Ray starts it again for later episodes.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import random
import typing
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlactors.agent.episodes import AgentSpec
    from rlactors.core.config import GRPOConfig

MAX_CALLS_IN_FLIGHT = 64  # per environment worker: its environments' methods run in this many threads


class EnvironmentWorker:
    """Holds environment instances by episode key (a plain class; a Ray actor at spawn time)."""

    def __init__(self) -> None:
        self.envs: dict[str, Any] = {}

    def reset(self, key: str, factory: Callable[[], Any], row: dict[str, Any]) -> Any:
        env = factory()
        self.envs[key] = env
        return _result(env.reset(**row))

    def call(self, key: str, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        return _result(getattr(self.envs[key], name)(*args, **kwargs))

    def read(self, key: str, name: str) -> Any:
        return getattr(self.envs[key], name)

    def drop(self, keys: list[str]) -> None:
        for key in keys:
            self.envs.pop(key, None)

    def count(self) -> int:
        return len(self.envs)


def _result(value: Any) -> Any:
    """An async environment method's value (it runs in one of the worker's threads)."""
    return asyncio.run(value) if inspect.isawaitable(value) else value


class HostedEnvironment:
    """One environment instance in an environment worker, used as the environment itself."""

    def __init__(self, worker: Any, factory: Callable[[], Any], hosted_type: type):
        self._worker, self._factory, self.hosted_type = worker, factory, hosted_type
        self._key = uuid.uuid4().hex

    def reset(self, **row: Any) -> Any:
        import ray

        return ray.get(self._worker.reset.remote(self._key, self._factory, row))

    def hosted_tools(self, names: list[str]) -> list[Callable]:
        """Async tools with the schemas of the class's methods `names`, run in the worker."""
        return [self._tool(name) for name in names]

    def _tool(self, name: str) -> Callable:
        method = getattr(self.hosted_type, name)
        worker, key = self._worker, self._key

        async def call(**kwargs: Any) -> Any:
            return await worker.call.remote(key, name, (), kwargs)

        signature = inspect.signature(method)
        call.__name__ = call.__qualname__ = name
        call.__doc__ = method.__doc__
        call.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])  # no self
        call.__annotations__ = {k: v for k, v in typing.get_type_hints(method).items() if k != "self"}
        return call

    def __getattr__(self, name: str) -> Any:
        """A reward function's access: a method call or an attribute read, in the worker."""
        if name.startswith("_"):
            raise AttributeError(name)
        import ray

        worker, key = self._worker, self._key
        if callable(getattr(self.hosted_type, name, None)):
            return lambda *args, **kwargs: ray.get(worker.call.remote(key, name, args, kwargs))
        return ray.get(worker.read.remote(key, name))

    def __repr__(self) -> str:
        return f"HostedEnvironment({self.hosted_type.__name__}, key={self._key})"


class HostedFactory:
    """`environment_factory` for episodes: each call places a new environment on the next worker."""

    def __init__(self, factory: Callable[[], Any], hosted_type: type, workers: list[Any]):
        self.factory, self.hosted_type, self.workers = factory, hosted_type, workers
        self._turn: itertools.count | None = None

    def __call__(self) -> HostedEnvironment:
        if self._turn is None:  # made in the process that uses it: rollout workers start at random places
            self._turn = itertools.count(random.randrange(len(self.workers)))
        worker = self.workers[next(self._turn) % len(self.workers)]
        return HostedEnvironment(worker, self.factory, self.hosted_type)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_turn": None}


class EnvironmentWorkers:
    """`config.environment_workers` actors and the AgentSpec whose environments live in them."""

    def __init__(self, config: GRPOConfig, spec: AgentSpec, types: dict[str | None, type]):
        import ray

        remote = ray.remote(
            num_cpus=config.environment_worker_cpus,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=MAX_CALLS_IN_FLIGHT,
        )(EnvironmentWorker)
        self.actors = [
            remote.options(name=f"rlactors/environment-{rank}").remote() for rank in range(config.environment_workers)
        ]
        factories = spec.environment_factories or {}
        self.spec = replace(
            spec,
            environment_factories={
                name: HostedFactory(factory, types[name], self.actors) for name, factory in factories.items()
            },
        )

    def release(self, environments: list[Any] | None) -> None:
        """Drops the instances behind a scored batch's environments (no wait)."""
        by_worker: dict[Any, list[str]] = {}
        for env in environments or []:
            if isinstance(env, HostedEnvironment):
                by_worker.setdefault(env._worker, []).append(env._key)
        for worker, keys in by_worker.items():
            worker.drop.remote(keys)

    def counts(self) -> list[int]:
        import ray

        return ray.get([actor.count.remote() for actor in self.actors])

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
