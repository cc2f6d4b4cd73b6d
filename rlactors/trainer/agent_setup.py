"""TRL's `tools`, `environment_factory` and `rollout_func`, from Python objects or the config's
"module:attr" strings, checked at start-up (every tool has a schema, every environment a
`reset`), into what the rollout workers run (`AgentSpec`) and the rewards environments own.

    GRPOTrainer(model=..., reward_funcs=[...], args=GRPOConfig(max_tool_calling_iterations=4),
                train_dataset=ds, tools=[calculator])
    GRPOTrainer(..., environment_factory=GuessingGame)          # reset(**row), public methods = tools
    GRPOTrainer(..., environment_factory={"game": Game, "code": CodeEnv})  # row["environment"] picks

An environment with `get_reward()` is a reward source too (weight 1, named after its class), as in
TRL: `reward_funcs` may then be left out. Reward functions also receive `environments=` (one per
sample) and, in chat form, the whole trajectory as `completions` (assistant and tool messages).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlactors.agent.episodes import AgentSpec, environment_type
from rlactors.agent.tools import check_tools
from rlactors.core.config import ConfigError, GRPOConfig
from rlactors.distributed import scoring


@dataclass
class AgentSetup:
    spec: AgentSpec | None  # None: single-turn sampling
    rollout_func: Callable[..., dict[str, Any]] | None
    environment_rewards: list[scoring.RewardFunction]
    environment_types: dict[str | None, type] = field(default_factory=dict)  # the class each factory makes


def resolve(config: GRPOConfig, tools: Any, environment_factory: Any, rollout_func: Any, tokenizer: Any) -> AgentSetup:
    tools = [_object(t, "tools") for t in (tools if tools is not None else config.tools)]
    factories = environment_factory if environment_factory is not None else config.environment_factory
    if factories is not None and not isinstance(factories, dict):
        factories = {None: factories}
    if factories is not None:
        factories = {name: _object(f, "environment_factory") for name, f in factories.items()}
    func = _object(rollout_func if rollout_func is not None else config.rollout_func, "rollout_func")
    if func is not None and (tools or factories):
        raise ConfigError(
            "rollout_func runs its own generation loop: give it alone, or use tools / environment_factory "
            "and let rlactors run the loop"
        )
    if config.environment_workers and not factories:
        raise ConfigError(
            f"environment_workers={config.environment_workers} hosts environments, but no environment_factory "
            "is given: give environment_factory, or leave environment_workers at 0"
        )
    if not tools and not factories:
        return AgentSetup(None, func, [])
    check_tools(tools)
    spec = AgentSpec(tools, factories, getattr(tokenizer, "chat_template", None))
    rewards, types = [], {}
    for name, factory in (factories or {}).items():
        env = _probe(name, factory)
        types[name] = type(env)
        check_tools(tools + spec.environment_tools(env), f"environment_factory {name or type(env).__name__}")
        if callable(getattr(env, "get_reward", None)) and all(r.name != type(env).__name__ for r in rewards):
            rewards.append(scoring.RewardFunction(type(env).__name__, _EnvironmentReward(type(env))))
    return AgentSetup(spec, None, rewards, types)


def _object(value: Any, field_name: str) -> Any:
    if value is None or callable(value):
        if value is not None:
            scoring.ship_by_value(getattr(value, "__module__", None))
        return value
    try:
        return scoring.import_object(value, field_name)
    except scoring.RewardError as err:
        raise ConfigError(str(err)) from None


def _probe(name: str | None, factory: Callable[[], Any]) -> Any:
    label = f"environment_factory{'' if name is None else f'[{name!r}]'}"
    try:
        env = factory()
    except Exception as err:
        raise ConfigError(
            f"{label}: calling it with no arguments raised {type(err).__name__}: {err}; "
            "an environment class must construct with no arguments (reset(**row) sets it up)"
        ) from err
    if not callable(getattr(env, "reset", None)):
        raise ConfigError(f"{label}: {type(env).__name__} has no reset(**row) method; every environment needs one")
    return env


class _EnvironmentReward:
    """An environment class's `get_reward()` as a reward function: None (missing) for samples of
    other environments or whose environment failed; a raising `get_reward` leaves that sample's
    reward missing, counted, as any reward function's."""

    def __init__(self, env_type: type):
        self.env_type = env_type
        self.__name__ = env_type.__name__

    def __call__(self, environments: list[Any], **_: Any) -> list[float | None]:
        out: list[float | None] = []
        for env in environments:
            if env is None or environment_type(env) is not self.env_type:
                out.append(None)
                continue
            value = env.get_reward()
            if inspect.isawaitable(value):
                raise TypeError("async get_reward is not supported yet: make it a plain method")
            out.append(value)
        return out


def prompt_renderer(spec: AgentSpec | None, tokenizer: Any, prompt_column: str) -> Callable[[dict], list[int]] | None:
    """A row's prompt ids as the rollout workers will render them (with its tools, and the tools of
    its environment, whose `reset` text is not known before the episode), for the length filter."""
    if spec is None:
        return None
    from rlactors.agent.chat_format import ChatFormat

    fmt = ChatFormat.of(tokenizer, spec.chat_template)
    print(f"rlactors: tool calls use {fmt.note}", flush=True)
    probes: dict[Any, list] = {}

    def render(row: dict[str, Any]) -> list[int]:
        factory = spec.factory_for(row)
        if factory not in probes:
            probes[factory] = spec.environment_tools(factory()) if factory else []
        prompt = row[prompt_column]
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        return fmt.prompt_ids(messages, spec.tools + probes[factory])

    return render


GENERATED = ("completion", "completion_ids")  # what the reward functions get of each sample, not of its row


def reward_inputs(batch: Any, rows: list[dict[str, Any]], prompt_column: str) -> tuple[list, dict[str, list]]:
    """(completions, columns) for the reward functions: chat completions as messages (the whole
    episode, tool results included, where there were turns), each sample's `completion_ids` (the
    episode's, tool results included, as TRL's), the rows' other columns, rollout_func's extra
    keys and the episodes' environments."""
    chat = isinstance(rows[0][prompt_column], list)
    if batch.trajectories is not None and chat:
        completions: list = batch.trajectories
    else:
        completions = [[{"role": "assistant", "content": text}] if chat else text for text in batch.completions]
    # as TRL: a row's own "completion" or "completion_ids" column gives way to the sample's
    columns = {key: [row[key] for row in rows] for key in rows[0] if key not in (prompt_column, *GENERATED)}
    lengths = batch.completion_mask.sum(-1).tolist()  # right-padded: the first `length` ids are the sample's
    columns["completion_ids"] = [ids[:n] for ids, n in zip(batch.completion_ids.tolist(), lengths)]
    columns.update(batch.columns or {})
    if batch.environments is not None:  # a failed episode's environment is not to be trusted: None
        columns["environments"] = [None if f else env for env, f in zip(batch.environments, batch.failures)]
    return completions, columns


def environment_names(spec: AgentSpec | None, rows: list[dict[str, Any]]) -> list[str] | None:
    """Each sample's environment name, where a dict `environment_factory` picks one per row."""
    factories = spec.environment_factories if spec is not None else None
    if not factories or None in factories:
        return None
    return [str(row.get("environment")) for row in rows]
