"""Episodes: what one multi-turn rollout is, how it starts from a dataset row, and the loop that
runs many of them at once on one engine.

Every episode advances on its own: vLLM steps every episode that is generating; when one's turn
ends with tool calls, its tools start (`ToolRunner`) and the others keep generating; when the
results are back it is queued for its next turn. An episode ends when a turn has no call, at
`max_tool_calling_iterations` tool rounds, or when its tokens reach `max_completion_length`.

Token-in/token-out: `completion_ids` are the ids vLLM sampled, each turn's as sampled, with the
ids of the tool results between them (`env_mask` 0 there, 1 on sampled tokens); vLLM's next turn
reads exactly `prompt_ids + completion_ids`, and so does the learner. Nothing is encoded again.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlactors.agent.chat_format import ChatFormat
from rlactors.agent.tools import OUTCOMES, ToolOutcome, ToolRunner, tool_name


class TurnSource(Protocol):
    """The engine side (`rlactors.engine.vllm_engine.TurnStream`)."""

    def add(self, key: str, token_ids: list[int], max_tokens: int) -> None: ...
    def step(self) -> list[Any]: ...  # finished turns: .key, .token_ids, .logprobs, .finish_reason
    @property
    def busy(self) -> bool: ...


@dataclass
class AgentSpec:
    """The Python objects a rollout worker needs for episodes (they travel with the actor)."""

    tools: list[Callable] = field(default_factory=list)
    environment_factories: dict[str | None, Callable[[], Any]] | None = None
    chat_template: str | None = None  # the driver tokenizer's (a caller may have set a tool-calling one)

    def environment_tools(self, env: Any) -> list[Callable]:
        """An environment's public methods (but `reset` and `get_reward`), bound to it; for one in an
        environment worker (`rlactors.distributed.environments`), async tools that call it there."""
        names = [n for n, _ in inspect.getmembers(environment_type(env), predicate=inspect.isfunction)]
        names = [n for n in names if not n.startswith("_") and n not in ("reset", "get_reward")]
        hosted_tools = getattr(env, "hosted_tools", None)
        return hosted_tools(names) if hosted_tools is not None else [getattr(env, n) for n in names]

    def factory_for(self, row: dict[str, Any]) -> Callable[[], Any] | None:
        if self.environment_factories is None:
            return None
        if None in self.environment_factories:
            return self.environment_factories[None]
        name = row.get("environment")
        if name not in self.environment_factories:
            raise ValueError(
                f"a row's environment={name!r} is not a key of environment_factory "
                f"({sorted(map(str, self.environment_factories))}): fix the row's `environment` column or add it"
            )
        return self.environment_factories[name]


def environment_type(env: Any) -> type:
    """The environment's class (for one in an environment worker, the class of the instance there)."""
    return getattr(env, "hosted_type", None) or type(env)


@dataclass
class Episode:
    key: str
    prompt_ids: list[int] = field(default_factory=list)
    tools: dict[str, Callable] = field(default_factory=dict)
    env: Any = None
    env_tools: set[str] = field(default_factory=set)  # the names of the environment's own tools
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)  # 1: sampled by vLLM; 0: tool results and template
    logprobs: list[float] = field(default_factory=list)  # vLLM's, 0.0 where env_mask is 0
    messages: list[dict[str, Any]] = field(default_factory=list)  # the completion as chat messages
    turns: int = 0
    tool_rounds: int = 0
    outcomes: Counter = field(default_factory=Counter)
    prefill: str = ""  # the prompt's final assistant message, which the first turn continues
    finish_reason: str = ""  # "stop" | "length" | "iterations" | "failed"
    failure: str = ""  # the environment's traceback when it raised; the reward is then missing

    @property
    def model_tokens(self) -> int:
        return sum(self.env_mask)

    @property
    def env_tokens(self) -> int:
        return len(self.env_mask) - self.model_tokens


def start_episode(key: str, row: dict[str, Any], prompt_column: str, spec: AgentSpec, fmt: ChatFormat) -> Episode:
    """An episode for `row`: its environment made and reset (its text appended to the last user
    message), the prompt rendered with the tools it may call."""
    episode = Episode(key)
    messages = [dict(m) for m in row[prompt_column]] if isinstance(row[prompt_column], list) else None
    if messages is None:
        messages = [{"role": "user", "content": str(row[prompt_column])}]
    tools = list(spec.tools)
    factory = spec.factory_for(row)
    if factory is not None:
        try:
            episode.env = factory()
            extra = episode.env.reset(**row)
        except Exception:
            episode.failure = "environment reset raised:\n" + traceback.format_exc(limit=5)
            episode.finish_reason = "failed"
            return episode
        if extra:  # appended to the last user message, as TRL does
            last = max(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[last] = {**messages[last], "content": messages[last]["content"] + str(extra)}
        env_tools = spec.environment_tools(episode.env)
        episode.env_tools = {tool_name(t) for t in env_tools}
        tools += env_tools
    episode.tools = {tool_name(t): t for t in tools}
    episode.prompt_ids = fmt.prompt_ids(messages, tools)
    if messages[-1]["role"] == "assistant":
        episode.prefill = str(messages[-1]["content"])
    return episode


@dataclass
class LoopLimits:
    max_completion_length: int
    max_seq_length: int
    max_tool_calling_iterations: int | None
    max_tool_response_tokens: int


class EpisodeLoop:
    """Runs episodes to their end on `source`, with tools on `runner`."""

    def __init__(self, source: TurnSource, fmt: ChatFormat, runner: ToolRunner, limits: LoopLimits):
        self.source, self.fmt, self.runner, self.limits = source, fmt, runner, limits
        self.tokenizer = fmt.tokenizer
        self.eos = self.tokenizer.eos_token_id

    def run(self, episodes: Sequence[Episode], locked: bool = False) -> list[Episode]:
        """Every episode to its end. `locked`: all episodes wait for each other at every turn (the
        way a batch-synchronous loop runs; for benchmarks)."""
        by_key = {e.key: e for e in episodes}
        tools: dict[concurrent.futures.Future, Episode] = {}
        held: list[tuple[Episode, list[ToolOutcome]]] = []
        for e in episodes:
            if not e.finish_reason:
                self._queue(e)
        while self.source.busy or tools or held:
            if self.source.busy:
                for turn in self.source.step():
                    episode = by_key[turn.key]
                    calls = self._turn_done(episode, turn)
                    if calls:
                        tools[self.runner.submit(calls, episode.tools)] = episode
            elif tools:
                concurrent.futures.wait(tools, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in [f for f in tools if f.done()]:
                held.append((tools.pop(future), future.result()))
            if locked and (self.source.busy or tools):
                continue
            for episode, outcomes in held:
                self._tool_results(episode, outcomes)
            held = []
        return list(episodes)

    def _queue(self, episode: Episode) -> None:
        limits = self.limits
        room = min(
            limits.max_completion_length - len(episode.completion_ids),
            limits.max_seq_length - len(episode.prompt_ids) - len(episode.completion_ids),
        )
        if room <= 0:
            episode.finish_reason = "length"
            return
        self.source.add(episode.key, episode.prompt_ids + episode.completion_ids, room)

    def _turn_done(self, episode: Episode, turn: Any) -> list:
        """Records a sampled turn; the calls to run, or [] when the episode ends here."""
        ids = list(turn.token_ids)
        episode.completion_ids += ids
        episode.env_mask += [1] * len(ids)
        episode.logprobs += list(turn.logprobs)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        parsed = self.fmt.parse((episode.prefill if episode.turns == 0 else "") + text)
        episode.turns += 1
        episode.messages.append(parsed.as_message())
        limit = self.limits.max_tool_calling_iterations
        if turn.finish_reason == "length" and not (parsed.calls and self._ended_by_call(ids)):
            episode.finish_reason = "length"
        elif not parsed.calls:
            episode.finish_reason = "stop"
        elif limit is not None and episode.tool_rounds >= limit:
            episode.finish_reason = "iterations"
        else:
            return parsed.calls
        return []

    def _ended_by_call(self, ids: list[int]) -> bool:
        end = self.fmt.call_end
        return bool(end) and self.tokenizer.decode(ids[-8:]).rstrip().endswith(end)

    def _tool_results(self, episode: Episode, outcomes: list[ToolOutcome]) -> None:
        episode.tool_rounds += 1
        for outcome in outcomes:
            episode.outcomes[outcome.kind] += 1
        if any(o.kind == "raised" for o in outcomes) and episode.env is not None:
            raised = [o for o in outcomes if o.kind == "raised" and o.name in episode.env_tools]
            if raised:  # the environment's own method failed: its state is not to be trusted
                episode.failure = f"environment tool {raised[0].name} failed: {raised[0].content}"
                episode.finish_reason = "failed"
                return
        messages = [{"role": "tool", "name": o.name, "content": self._cut(o.content)} for o in outcomes]
        suffix = self.fmt.suffix_ids(messages)
        if episode.completion_ids[-1:] != [self.eos]:
            suffix = [self.eos, *suffix]  # the turn stopped at the call's end: close it as the template does
        if len(episode.completion_ids) + len(suffix) >= self.limits.max_completion_length:
            episode.finish_reason = "length"  # no room for the results and a reply
            return
        episode.messages += messages
        episode.completion_ids += suffix
        episode.env_mask += [0] * len(suffix)
        episode.logprobs += [0.0] * len(suffix)
        self._queue(episode)

    def _cut(self, text: str) -> str:
        """`text` within max_tool_response_tokens tokens (characters are cut first: memory stays bounded)."""
        budget = self.limits.max_tool_response_tokens
        head = text[: budget * 8]
        ids = self.tokenizer(head, add_special_tokens=False).input_ids
        if len(ids) <= budget and len(head) == len(text):
            return text
        kept = self.tokenizer.decode(ids[:budget])
        return f"{kept}\n[cut: the result was {len(text)} characters, over max_tool_response_tokens={budget} tokens]"


def episode_counts(episodes: Sequence[Episode]) -> dict[str, float]:
    """Sums over `episodes` (they add up across rollout workers); `episode_means` makes the logged row."""
    out = {
        "episodes": float(len(episodes)),
        "turns": float(sum(e.turns for e in episodes)),
        "model_tokens": float(sum(e.model_tokens for e in episodes)),
        "env_tokens": float(sum(e.env_tokens for e in episodes)),
        "failed": float(sum(bool(e.failure) for e in episodes)),
    }
    for kind in OUTCOMES:
        out[f"tool_{kind}"] = float(sum(e.outcomes[kind] for e in episodes))
    return out


def episode_means(counts: dict[str, float]) -> dict[str, float]:
    """The logged metrics, in TRL's names where TRL has them (`tools/call_frequency`: calls per
    episode, `tools/failure_frequency`: failed calls per call)."""
    if not counts:
        return {}
    n = max(counts["episodes"], 1.0)
    calls = sum(counts[f"tool_{kind}"] for kind in OUTCOMES)
    failed = calls - counts["tool_ok"]
    out = {
        "tools/call_frequency": calls / n,
        "tools/failure_frequency": failed / calls if calls else 0.0,
        "episodes/turns_mean": counts["turns"] / n,
        "episodes/model_tokens_mean": counts["model_tokens"] / n,
        "episodes/env_tokens_mean": counts["env_tokens"] / n,
        "episodes/failed": counts["failed"],
    }
    for kind in OUTCOMES[1:]:
        out[f"tools/{kind}"] = counts[f"tool_{kind}"]
    return out
