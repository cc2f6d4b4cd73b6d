"""Tools the model calls: checking a call against the tool's signature, and running it off the
engine's thread with a time limit.

A tool is a function (sync or async) with type hints and a Google-style docstring, as TRL and
transformers take them; an environment's public methods are tools too. Every way a call can go
wrong becomes a one-line message to the model and a count of its kind (`OUTCOMES`); the rollout
worker never raises for a bad call.

Time limits: an async tool is cancelled at `timeout_s`; a sync tool runs in a thread of a pool and,
at `timeout_s`, gets an exception raised inside it (`TimeoutError`, at its next Python
instruction), so a tool looping in Python stops. A sync tool blocked inside C (a socket read
without its own timeout, `time.sleep`) cannot be interrupted in a thread: its thread ends when
that call returns, and the episode has had its error message already. Give such tools their own
timeouts, or make them async.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlactors.agent.chat_format import ToolCall

OUTCOMES = ("ok", "malformed", "unknown_tool", "bad_arguments", "raised", "timeout")
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
}


@dataclass
class ToolOutcome:
    name: str
    content: str  # what the model reads
    kind: str  # one of OUTCOMES
    seconds: float = 0.0


def tool_name(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def tool_schema(fn: Callable) -> dict[str, Any]:
    """transformers' JSON schema of `fn` (from its type hints and docstring)."""
    from transformers.utils import get_json_schema

    return get_json_schema(fn)


def check_tools(tools: Sequence[Callable], owner: str = "tools") -> None:
    """Fails at start-up, naming the tool, when one has no usable schema or two share a name."""
    seen: set[str] = set()
    for fn in tools:
        name = tool_name(fn)
        if name in seen:
            raise ValueError(f"{owner}: two tools are named {name!r}; tool names must be unique")
        seen.add(name)
        try:
            tool_schema(fn)
        except Exception as err:
            raise ValueError(
                f"{owner}: tool {name!r} has no usable schema ({err}); give every argument a type hint and "
                "document it in a Google-style docstring (Args: name: what it is)"
            ) from err


def check_arguments(schema: dict[str, Any], arguments: dict[str, Any]) -> str:
    """'' when `arguments` fit the tool's parameters, else what is wrong (one line)."""
    params = schema["function"].get("parameters", {})
    props = params.get("properties", {})
    missing = [p for p in params.get("required", []) if p not in arguments]
    if missing:
        return f"missing argument(s) {', '.join(missing)}"
    unknown = [a for a in arguments if a not in props]
    if unknown:
        return f"unknown argument(s) {', '.join(unknown)}; it takes {', '.join(props) or 'none'}"
    for name, value in arguments.items():
        expected = props[name].get("type")
        kinds = JSON_TYPES.get(expected) if isinstance(expected, str) else None
        wrong_bool = isinstance(value, bool) and expected in ("integer", "number")
        if kinds and (not isinstance(value, kinds) or wrong_bool):
            return f"argument {name} must be {expected}, got {type(value).__name__} {value!r:.40}"
    return ""


class ToolRunner:
    """Runs calls on an event loop of its own (async tools) and a thread pool (sync tools)."""

    def __init__(self, timeout_s: float, max_threads: int = 32):
        self.timeout_s = timeout_s
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="rlactors-tool")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rlactors-tool-loop", daemon=True)
        self.thread.start()

    def submit(self, calls: list[ToolCall], tools: dict[str, Callable]) -> concurrent.futures.Future:
        """Runs one turn's calls together; the future's result is a `ToolOutcome` per call, in order."""
        return asyncio.run_coroutine_threadsafe(self._turn(calls, tools), self.loop)

    async def _turn(self, calls: list[ToolCall], tools: dict[str, Callable]) -> list[ToolOutcome]:
        return list(await asyncio.gather(*(self._one(call, tools) for call in calls)))

    async def _one(self, call: ToolCall, tools: dict[str, Callable]) -> ToolOutcome:
        if call.error:
            return ToolOutcome(call.name or "?", f"Error: malformed tool call: {call.detail}", "malformed")
        fn = tools.get(call.name)
        if fn is None:
            return ToolOutcome(
                call.name, f"Error: unknown tool {call.name!r}; the tools are {', '.join(tools)}", "unknown_tool"
            )
        problem = check_arguments(tool_schema(fn), call.arguments)
        if problem:
            return ToolOutcome(call.name, f"Error: {call.name}: {problem}", "bad_arguments")
        start = self.loop.time()
        try:
            if inspect.iscoroutinefunction(fn):
                result = await asyncio.wait_for(fn(**call.arguments), self.timeout_s)
            else:
                result = await self._in_thread(fn, call.arguments)
        except TimeoutError:
            return ToolOutcome(
                call.name, f"Error: {call.name} did not finish within {self.timeout_s:g} s", "timeout", self.timeout_s
            )
        except Exception as err:
            return ToolOutcome(call.name, f"Error: {call.name} raised {type(err).__name__}: {err}", "raised")
        return ToolOutcome(call.name, str(result), "ok", self.loop.time() - start)

    async def _in_thread(self, fn: Callable, arguments: dict[str, Any]) -> Any:
        ident: list[int] = []

        def run() -> Any:
            ident.append(threading.get_ident())
            return fn(**arguments)

        future = self.loop.run_in_executor(self.pool, run)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            if ident:
                _raise_in_thread(ident[0], TimeoutError)
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)


def _raise_in_thread(ident: int, exc: type[BaseException]) -> None:
    """Raises `exc` in thread `ident` at its next Python instruction."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))
