"""Rewards as Ray tasks: concurrent, and a hung one is killed at the timeout."""

import asyncio
import os
import time

import psutil
import pytest

from rlactors.distributed.scoring import resolve, score

pytestmark = pytest.mark.ray


def slow_a(prompts, completions, **_):
    time.sleep(1.0)
    return [1.0] * len(completions)


async def async_half(prompts, completions, **_):
    await asyncio.sleep(0.1)
    return [0.5] * len(completions)


def hangs(prompts, completions, **_):
    time.sleep(3600)


def raises(prompts, completions, **_):
    raise RuntimeError("reward server down")


def _meets(mine: str, other: str, value: float):
    """A reward that marks itself started, then waits for `other` to start: only concurrent calls meet."""

    def reward(prompts, completions, **_):
        open(mine, "w").close()
        deadline = time.time() + 20
        while not os.path.exists(other) and time.time() < deadline:
            time.sleep(0.05)
        return [value if os.path.exists(other) else 0.0] * len(completions)

    reward.__name__ = f"meets_{value}"
    return reward


def test_functions_run_concurrently(ray_cluster, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    out = score([resolve(_meets(a, b, 1.0)), resolve(_meets(b, a, 0.5))], ["p"] * 2, ["c"] * 2, {}, timeout_s=60)
    assert out.per_function == [[1.0, 1.0], [0.5, 0.5]], "the two reward functions did not run at once"


def test_async_reward_is_awaited(ray_cluster):
    out = score([resolve(async_half)], ["p"] * 3, ["c"] * 3, {}, timeout_s=30)
    assert out.per_function == [[0.5, 0.5, 0.5]]


def test_hung_reward_is_killed_and_missing(ray_cluster):
    before = {p.pid for p in psutil.process_iter()}
    start = time.perf_counter()
    out = score([resolve(hangs), resolve(slow_a)], ["p"] * 2, ["c"] * 2, {}, timeout_s=2.0)
    elapsed = time.perf_counter() - start
    assert out.per_function[0] == [None, None] and out.results[0].timed_out
    assert out.per_function[1] == [1.0, 1.0]
    assert elapsed < 20, f"a 2 s reward timeout took {elapsed:.1f}s"
    deadline = time.time() + 20
    while time.time() < deadline:  # the killed task's worker process goes away
        hung = [
            p
            for p in psutil.process_iter(["pid", "cmdline"])
            if p.pid not in before and any("hangs" in part for part in (p.info["cmdline"] or []))
        ]
        if not hung:
            break
        time.sleep(0.5)
    assert not hung


def test_raising_reward_gives_missing_not_zero(ray_cluster):
    out = score([resolve(raises)], ["p"] * 2, ["c"] * 2, {}, timeout_s=30)
    assert out.per_function == [[None, None]] and out.results[0].errors == 2
    assert "reward server down" in out.results[0].first_error
