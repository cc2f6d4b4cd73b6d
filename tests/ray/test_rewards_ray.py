"""Rewards as Ray tasks: concurrent, and a hung one is killed at the timeout."""
import asyncio
import time

import psutil
import pytest

from rlactors.rewards import resolve, score

pytestmark = pytest.mark.ray


def slow_a(prompts, completions, **_):
    time.sleep(1.0)
    return [1.0] * len(completions)


async def slow_b(prompts, completions, **_):
    await asyncio.sleep(1.0)
    return [0.5] * len(completions)


def hangs(prompts, completions, **_):
    time.sleep(3600)


def raises(prompts, completions, **_):
    raise RuntimeError("reward server down")


def test_functions_run_concurrently(ray_cluster):
    score([resolve(slow_a)], ["p"], ["c"], {}, timeout_s=30)  # warm a worker
    start = time.perf_counter()
    out = score([resolve(slow_a), resolve(slow_b)], ["p"] * 2, ["c"] * 2, {}, timeout_s=30)
    elapsed = time.perf_counter() - start
    assert out.per_function == [[1.0, 1.0], [0.5, 0.5]]
    assert elapsed < 1.9, f"two 1 s rewards took {elapsed:.2f}s: not concurrent"


def test_hung_reward_is_killed_and_missing(ray_cluster):
    before = {p.pid for p in psutil.process_iter()}
    start = time.perf_counter()
    out = score([resolve(hangs), resolve(slow_a)], ["p"] * 2, ["c"] * 2, {}, timeout_s=2.0)
    elapsed = time.perf_counter() - start
    assert out.per_function[0] == [None, None] and out.results[0].timed_out
    assert out.per_function[1] == [1.0, 1.0]
    assert elapsed < 2.0 * 1.5 + 1.0
    deadline = time.time() + 20
    while time.time() < deadline:  # the killed task's worker process goes away
        hung = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid not in before
                and any("hangs" in part for part in (p.info["cmdline"] or []))]
        if not hung:
            break
        time.sleep(0.5)
    assert not hung


def test_raising_reward_gives_missing_not_zero(ray_cluster):
    out = score([resolve(raises)], ["p"] * 2, ["c"] * 2, {}, timeout_s=30)
    assert out.per_function == [[None, None]] and out.results[0].errors == 2
    assert "reward server down" in out.results[0].first_error
