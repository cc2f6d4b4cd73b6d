"""The multi-turn loop's parts without an engine: call syntaxes, the SmolLM2 tool template, argument
checks, tools run with time limits, and the episode loop over a scripted turn source (a stand-in
for vLLM that writes given text, so each edge case is hit on purpose; the loop on real vLLM is in
tests/vllm/test_agent_engine.py)."""

import asyncio
import threading
import time
from dataclasses import dataclass

import pytest

from rlactors.agent.chat_format import TOOL_CHATML_TEMPLATE, ChatFormat, parse_hermes, parse_llama3
from rlactors.agent.episodes import AgentSpec, Episode, EpisodeLoop, LoopLimits, episode_counts, start_episode
from rlactors.agent.tools import ToolCall, ToolRunner, check_arguments, check_tools, tool_schema

pytestmark = pytest.mark.unit


def add(a: int, b: int) -> int:
    """Adds two integers.

    Args:
        a: the first integer
        b: the second integer
    """
    return a + b


async def slow_add(a: int, b: int) -> int:
    """Adds two integers, slowly.

    Args:
        a: the first integer
        b: the second integer
    """
    await asyncio.sleep(0.5)
    SLOW_DONE.append(time.perf_counter())
    return a + b


SLOW_DONE: list[float] = []  # when each slow_add call returned


def spin(n: int) -> int:
    """Never returns.

    Args:
        n: ignored
    """
    while True:
        n += 1


async def hang(n: int) -> int:
    """Never returns.

    Args:
        n: ignored
    """
    await asyncio.sleep(3600)
    return n


def flood(n: int) -> str:
    """Returns a lot of text.

    Args:
        n: ignored
    """
    return "x" * (10 * 2**20)


def broken(n: int) -> int:
    """Raises.

    Args:
        n: ignored
    """
    raise RuntimeError("tool bug")


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


@pytest.fixture(scope="module")
def fmt(tokenizer):
    return ChatFormat.of(tokenizer)


def call(name, **arguments):
    import json

    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


# ---- formats ---------------------------------------------------------------------------------


def test_smollm2_gets_the_tool_template_which_keeps_earlier_turns(tokenizer, fmt):
    assert fmt.syntax == "hermes" and fmt.template == TOOL_CHATML_TEMPLATE and "renders no tools" in fmt.note
    messages = [{"role": "user", "content": "What is 2+3?"}]
    prompt = fmt.prompt_ids(messages, [add])
    assert '"name": "add"' in tokenizer.decode(prompt)  # the schema is in the prompt
    turn = messages + [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}],
        }
    ]
    before = fmt.render(turn, [add], generation=False)
    after = fmt.render(turn + [{"role": "tool", "name": "add", "content": "5"}], [add], generation=True)
    assert after[: len(before)] == before  # prefix-preserving: appending results changes no earlier token
    suffix = fmt.suffix_ids([{"role": "tool", "name": "add", "content": "5"}])
    assert (
        tokenizer.decode(suffix)
        == "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    assert after[len(before) - 1 :] == suffix  # (`before` ends in "<|im_end|>\n": the suffix starts at its "\n")


def test_templates_that_cannot_carry_tools_are_refused(tokenizer):
    from rlactors.agent.chat_format import ChatFormatError

    with pytest.raises(ChatFormatError, match="tokenizer.chat_template"):
        ChatFormat.of(tokenizer, "{% for m in messages %}{{ m['content'] }}{% endfor %}")


def test_hermes_and_llama3_calls_parse_and_bad_ones_say_why():
    turn = parse_hermes('Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>')
    assert turn.content == "Let me add." and [(c.name, c.arguments, c.error) for c in turn.calls] == [
        ("add", {"a": 2, "b": 3}, "")
    ]
    assert parse_hermes('<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>').calls[0].arguments == {
        "a": 1
    }
    assert parse_hermes("<tool_call>{not json</tool_call>").calls[0].detail.startswith("the call is not valid JSON")
    assert "not closed" in parse_hermes('<tool_call>{"name": "add", "arguments": {}}').calls[0].detail
    assert parse_hermes('<tool_call>["add"]</tool_call>').calls[0].error == "malformed"
    assert parse_hermes("The answer is 5.").calls == []
    llama = parse_llama3('<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}')
    assert [(c.name, c.arguments) for c in llama.calls] == [("add", {"a": 1, "b": 2})]
    assert parse_llama3("It is 3.").calls == []


def test_arguments_are_checked_against_the_schema():
    schema = tool_schema(add)
    assert check_arguments(schema, {"a": 1, "b": 2}) == ""
    assert "missing argument(s) b" in check_arguments(schema, {"a": 1})
    assert "unknown argument(s) c" in check_arguments(schema, {"a": 1, "b": 2, "c": 3})
    assert "argument b must be integer, got str" in check_arguments(schema, {"a": 1, "b": "2"})
    assert "must be integer, got bool" in check_arguments(schema, {"a": 1, "b": True})
    with pytest.raises(ValueError, match="tool 'nodoc' has no usable schema"):

        def nodoc(a):
            return a

        check_tools([nodoc])
    with pytest.raises(ValueError, match="two tools are named 'add'"):
        check_tools([add, add])


# ---- running tools ---------------------------------------------------------------------------


def test_tools_run_with_limits_and_every_failure_is_a_message():
    runner = ToolRunner(timeout_s=1.0)
    tools = {f.__name__: f for f in (add, slow_add, spin, hang, broken)}
    threads = threading.active_count()
    calls = [
        ToolCall("add", {"a": 2, "b": 3}),
        ToolCall("slow_add", {"a": 1, "b": 1}),
        ToolCall("spin", {"n": 0}),
        ToolCall("hang", {"n": 0}),
        ToolCall("broken", {"n": 0}),
        ToolCall("nope", {}),
        ToolCall("add", {"a": 1}),
        ToolCall("", error="malformed", detail="the call is not valid JSON"),
    ]
    start = time.perf_counter()
    outcomes = runner.submit(calls, tools).result(timeout=30)
    assert time.perf_counter() - start < 5  # together: one time limit, not one per call
    assert [o.kind for o in outcomes] == [
        "ok",
        "ok",
        "timeout",
        "timeout",
        "raised",
        "unknown_tool",
        "bad_arguments",
        "malformed",
    ]
    assert [o.content for o in outcomes[:2]] == ["5", "2"]
    assert "did not finish within 1 s" in outcomes[2].content and "RuntimeError: tool bug" in outcomes[4].content
    assert "unknown tool 'nope'; the tools are add, slow_add" in outcomes[5].content
    deadline = time.monotonic() + 5
    while threading.active_count() > threads + runner.pool._max_workers and time.monotonic() < deadline:
        time.sleep(0.1)
    spinning = [t for t in threading.enumerate() if t.name.startswith("rlactors-tool") and t.is_alive()]
    time.sleep(0.5)
    runner.close()
    # The spinning tool was stopped inside its thread: the pool's threads are idle, none is busy in `spin`.
    import sys

    frames = sys._current_frames()
    assert not any(frames.get(t.ident) and "spin" in repr(frames[t.ident].f_code) for t in spinning)


# ---- the episode loop on a scripted source ----------------------------------------------------


@dataclass
class Turn:
    key: str
    token_ids: list
    logprobs: list
    finish_reason: str


class ScriptedSource:
    """Writes each episode's scripted turns, one token per step for every running request (as vLLM
    decodes), and records when each turn was requested."""

    def __init__(self, tokenizer, scripts):
        self.tokenizer, self.scripts = tokenizer, {k: list(v) for k, v in scripts.items()}
        self.running: dict = {}
        self.requests: list = []  # (key, time, token ids read)

    def add(self, key, token_ids, max_tokens):
        text = self.scripts[key].pop(0)
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if not text.endswith("</tool_call>"):
            ids.append(self.tokenizer.eos_token_id)
        finish = "length" if len(ids) > max_tokens else "stop"
        self.running[key] = [ids[:max_tokens], 0, finish]
        self.requests.append((key, time.perf_counter(), list(token_ids)))

    @property
    def busy(self):
        return bool(self.running)

    def step(self):
        time.sleep(0.002)
        done = []
        for key, state in list(self.running.items()):
            state[1] += 1
            if state[1] >= len(state[0]):
                del self.running[key]
                done.append(Turn(key, state[0], [-0.5] * len(state[0]), state[2]))
        return done


def _loop(tokenizer, fmt, scripts, tools, *, max_len=400, iterations=None, response_tokens=64, timeout_s=5.0):
    source = ScriptedSource(tokenizer, scripts)
    spec = AgentSpec(tools=tools)
    row = {"prompt": [{"role": "user", "content": "Add things."}]}
    episodes = [start_episode(key, row, "prompt", spec, fmt) for key in scripts]
    loop = EpisodeLoop(source, fmt, ToolRunner(timeout_s), LoopLimits(max_len, 2048, iterations, response_tokens))
    return loop, source, episodes


def test_token_in_token_out_and_the_mask(tokenizer, fmt):
    scripts = {"a": [call("add", a=2, b=3), "The answer is 5."]}
    loop, source, (episode,) = _loop(tokenizer, fmt, scripts, [add])
    loop.run([episode])
    # Turn 2 read exactly the prompt, turn 1's sampled ids and the tool result's ids: nothing encoded again.
    first, second = source.requests
    assert first[2] == episode.prompt_ids
    assert second[2] == episode.prompt_ids + episode.completion_ids[: len(second[2]) - len(episode.prompt_ids)]
    turn1 = tokenizer(call("add", a=2, b=3), add_special_tokens=False).input_ids
    result = [tokenizer.eos_token_id, *fmt.suffix_ids([{"role": "tool", "name": "add", "content": "5"}])]
    turn2 = tokenizer("The answer is 5.", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert episode.completion_ids == turn1 + result + turn2
    assert episode.env_mask == [1] * len(turn1) + [0] * len(result) + [1] * len(turn2)
    assert episode.logprobs == [-0.5] * len(turn1) + [0.0] * len(result) + [-0.5] * len(turn2)
    assert [m["role"] for m in episode.messages] == ["assistant", "tool", "assistant"]
    assert episode.messages[0]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 2, "b": 3}}
    assert episode.finish_reason == "stop" and episode.turns == 2 and episode.outcomes == {"ok": 1}


def test_a_slow_tool_holds_back_no_other_episode(tokenizer, fmt):
    scripts = {
        "slow": [call("slow_add", a=1, b=1), "Done."],
        "fast": [call("add", a=1, b=1), call("add", a=2, b=2), call("add", a=3, b=3), "Done."],
    }
    loop, source, episodes = _loop(tokenizer, fmt, scripts, [add, slow_add])
    SLOW_DONE.clear()
    loop.run(episodes)
    fast_done = max(t for key, t, _ in source.requests if key == "fast")
    assert fast_done < SLOW_DONE[0]  # the fast episode ran its 4 turns while the slow tool (0.5 s) was running
    # Locked turn by turn, the fast episode's second turn waits for the slow tool.
    loop, source, episodes = _loop(tokenizer, fmt, scripts, [add, slow_add])
    started = time.perf_counter()
    loop.run(episodes, locked=True)
    second_fast = sorted(t for key, t, _ in source.requests if key == "fast")[1]
    assert second_fast - started >= 0.5


def test_hung_flooding_and_bad_calls_become_messages_and_the_episode_goes_on(tokenizer, fmt):
    scripts = {
        "hung": [call("hang", n=1), "ok"],
        "flood": [call("flood", n=1), "ok"],
        "bad": ["<tool_call>{oops</tool_call>", call("nope"), call("add", a="x", b=1), "ok"],
    }
    loop, _source, episodes = _loop(tokenizer, fmt, scripts, [add, hang, flood], timeout_s=0.5, max_len=1000)
    started = time.perf_counter()
    hung, flooded, bad = loop.run(episodes)
    assert time.perf_counter() - started < 10
    assert hung.outcomes == {"timeout": 1} and hung.finish_reason == "stop"
    assert "did not finish within 0.5 s" in hung.messages[1]["content"]
    flood_text = flooded.messages[1]["content"]
    assert "[cut: the result was 10485760 characters, over max_tool_response_tokens=64 tokens]" in flood_text
    assert flooded.env_tokens < 120  # the cut result, not 10 MB, entered the context
    assert bad.outcomes == {"malformed": 1, "unknown_tool": 1, "bad_arguments": 1} and bad.turns == 4
    counts = episode_counts([hung, flooded, bad])
    assert counts["tool_timeout"] == 1 and counts["tool_malformed"] == 1 and counts["turns"] == 8


def test_episodes_end_at_the_round_limit_and_the_length_limit(tokenizer, fmt):
    scripts = {"a": [call("add", a=1, b=1)] * 5}
    loop, _, (episode,) = _loop(tokenizer, fmt, scripts, [add], iterations=2)
    loop.run([episode])
    assert episode.tool_rounds == 2 and episode.turns == 3 and episode.finish_reason == "iterations"
    loop, _, (episode,) = _loop(tokenizer, fmt, scripts, [add], max_len=60)
    loop.run([episode])
    assert episode.finish_reason == "length" and len(episode.completion_ids) <= 60


class Game:
    """Guess a number; `reset` says the range."""

    def reset(self, **row):
        if row.get("explode"):
            raise ValueError("reset failed")
        self.secret, self.tries = 7, 0
        return " Guess a number from 1 to 10."

    def guess(self, n: int) -> str:
        """Checks a guess.

        Args:
            n: the guess
        """
        self.tries += 1
        if n == 99:
            raise RuntimeError("environment bug")
        return "higher" if n < self.secret else "lower" if n > self.secret else "right"

    def get_reward(self) -> float:
        return 1.0 / self.tries


def test_environments_reset_expose_their_methods_and_their_failures_are_kept(tokenizer, fmt):
    spec = AgentSpec(environment_factories={None: Game})
    good = start_episode("good", {"prompt": [{"role": "user", "content": "Play."}]}, "prompt", spec, fmt)
    assert "guess" in good.tools and "reset" not in good.tools and "get_reward" not in good.tools
    assert "Play. Guess a number from 1 to 10." in tokenizer.decode(good.prompt_ids)
    failed = start_episode(
        "failed", {"prompt": [{"role": "user", "content": "Play."}], "explode": True}, "prompt", spec, fmt
    )
    assert failed.finish_reason == "failed" and "reset failed" in failed.failure
    raising = start_episode("raising", {"prompt": [{"role": "user", "content": "Play."}]}, "prompt", spec, fmt)
    source = ScriptedSource(
        tokenizer, {"good": [call("guess", n=3), call("guess", n=7), "Got it."], "raising": [call("guess", n=99)]}
    )
    loop = EpisodeLoop(source, fmt, ToolRunner(5), LoopLimits(400, 2048, None, 64))
    loop.run([good, failed, raising])
    assert [m["content"] for m in good.messages if m["role"] == "tool"] == ["higher", "right"]
    assert good.env.get_reward() == 0.5 and not good.failure
    assert raising.finish_reason == "failed" and "environment bug" in raising.failure
    assert episode_counts([good, failed, raising])["failed"] == 2


def test_a_prefilled_reply_is_continued_and_parsed_whole(tokenizer, fmt):
    spec = AgentSpec(tools=[add])
    prefill = '<tool_call>\n{"name": "add", "arguments": {"a": '
    row = {"prompt": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": prefill}]}
    episode = start_episode("p", row, "prompt", spec, fmt)
    assert tokenizer.decode(episode.prompt_ids).endswith("<|im_start|>assistant\n" + prefill)
    source = ScriptedSource(tokenizer, {"p": ['2, "b": 3}}\n</tool_call>', "5"]})
    EpisodeLoop(source, fmt, ToolRunner(5), LoopLimits(400, 2048, None, 64)).run([episode])
    assert episode.outcomes == {"ok": 1} and episode.messages[1]["content"] == "5"


def test_an_environment_in_an_environment_worker_offers_the_same_tools():
    """A hosted environment's tools (async calls to its worker) carry the class's own schemas, so
    the model sees the same prompt; its type is the hosted class (rewards pick their samples by it)."""
    from rlactors.agent.episodes import environment_type
    from rlactors.distributed.environments import HostedEnvironment

    spec = AgentSpec(environment_factories={None: Game})
    hosted = HostedEnvironment(worker=None, factory=Game, hosted_type=Game)
    local_tools, hosted_tools = spec.environment_tools(Game()), spec.environment_tools(hosted)
    assert [tool_schema(t) for t in hosted_tools] == [tool_schema(t) for t in local_tools]
    assert all(asyncio.iscoroutinefunction(t) for t in hosted_tools)
    assert environment_type(hosted) is Game and environment_type(Game()) is Game


def test_episode_type_is_plain():
    assert Episode("k").model_tokens == 0


# ---- the trainer's arguments -------------------------------------------------------------------


class NoReset:
    def guess(self, n: int) -> str:
        """Guess.

        Args:
            n: the guess
        """
        return "?"


def test_tools_and_environments_resolve_from_yaml_strings_and_bad_ones_are_named(tokenizer):
    from rlactors.core.config import ConfigError, GRPOConfig
    from rlactors.sandbox import python
    from rlactors.trainer import agent_setup

    config = GRPOConfig(tools=["rlactors.sandbox:python"], environment_factory={"game": f"{__name__}:Game"})
    setup = agent_setup.resolve(config, None, None, None, tokenizer)
    assert setup.spec.tools == [python] and setup.spec.environment_factories == {"game": Game}
    assert [r.name for r in setup.environment_rewards] == ["Game"]  # its get_reward is a reward source
    assert agent_setup.resolve(GRPOConfig(), None, None, None, tokenizer).spec is None  # single-turn
    with pytest.raises(ConfigError, match="NoReset has no reset"):
        agent_setup.resolve(GRPOConfig(), None, NoReset, None, tokenizer)
    with pytest.raises(ConfigError, match="environment_workers=2 hosts environments, but no environment_factory"):
        agent_setup.resolve(GRPOConfig(environment_workers=2), [add], None, None, tokenizer)
    with pytest.raises(ConfigError, match="rollout_func runs its own generation loop"):
        agent_setup.resolve(GRPOConfig(), [add], None, lambda prompts, trainer: {}, tokenizer)
    with pytest.raises(ConfigError, match=r"tools entry 'add': write \"module:attr\""):
        agent_setup.resolve(GRPOConfig(tools=["add"]), None, None, None, tokenizer)
    with pytest.raises(ValueError, match="tool 'nodoc' has no usable schema"):

        def nodoc(a):
            return a

        agent_setup.resolve(GRPOConfig(), [nodoc], None, None, tokenizer)


def test_the_sandboxed_python_tool_answers_hostile_code_with_an_error():
    from rlactors.sandbox import namespaces_available, python

    if not namespaces_available():
        pytest.skip("no usable `unshare` here")
    runner = ToolRunner(timeout_s=30)
    codes = [
        "print(6 * 7)",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "open('/etc/rlactors-owned', 'w').write('x')",
        "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)",
        "x = bytearray(8 * 2**30)",
    ]
    # All at once: each run has a user of its own, so the fork bomb cannot keep the others from starting.
    outcomes = runner.submit([ToolCall("python", {"code": c}) for c in codes], {"python": python}).result(60)
    runner.close()
    assert outcomes[0].content == "42"
    assert all(o.kind == "ok" and o.content.startswith("Error:") for o in outcomes[1:]), [o.content for o in outcomes]
    import os

    assert not os.path.exists("/etc/rlactors-owned")
