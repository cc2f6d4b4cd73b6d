"""Reward calls without Ray: errors become missing rewards, never 0; bad results are caught."""

import pytest
import torch

from rlactors import reward_funcs
from rlactors.distributed.scoring import RewardError, check_picklable, resolve, run_reward

pytestmark = pytest.mark.unit


def test_exceptions_fall_back_to_per_sample_and_count():
    def flaky(prompts, completions, **_):
        if any("boom" in c for c in completions):
            raise ValueError("boom")
        return [1.0] * len(completions)

    out = run_reward("flaky", flaky, ["p"] * 3, ["a", "boom", "c"], {})
    assert out.values == [1.0, None, 1.0] and out.errors == 1 and "boom" in out.first_error


def test_nan_inf_none_strings_and_tensors():
    def mixed(prompts, completions, **_):
        return [float("nan"), float("inf"), None, "high", torch.tensor(0.5), 2]

    out = run_reward("mixed", mixed, ["p"] * 6, ["c"] * 6, {})
    assert out.values == [None, None, None, None, 0.5, 2.0]
    assert out.errors == 3  # nan, inf, "high"; None from the function itself is no error


def test_wrong_length_names_the_function():
    with pytest.raises(RewardError, match="'short' returned 1 values for 2 completions"):
        run_reward("short", lambda prompts, completions, **_: [1.0], ["p"] * 2, ["a", "b"], {})


def test_async_function_and_columns():
    async def by_answer(prompts, completions, answer, **_):
        return [float(c == a) for c, a in zip(completions, answer)]

    out = run_reward("by_answer", by_answer, ["p", "p"], ["1", "2"], {"answer": ["1", "1"]})
    assert out.values == [1.0, 0.0]


def test_builtin_rewards():
    chat = [[{"role": "assistant", "content": "12 + 7 = 19."}], [{"role": "assistant", "content": "9"}]]
    assert reward_funcs.exact_answer(None, chat, answer=["19", "19"]) == [1.0, 0.0]
    assert reward_funcs.number_only(None, ["19", " 19. ", "it is 19"]) == [1.0, 1.0, 0.0]
    assert reward_funcs.gsm8k_answer(None, ["so 72"], answer=["... #### 72"]) == [1.0]


def test_resolve_strings_and_unpicklable():
    assert resolve("rlactors.reward_funcs:exact_answer").fn is reward_funcs.exact_answer
    with pytest.raises(RewardError, match='write "module:attr"'):
        resolve("exact_answer")
    with pytest.raises(RewardError, match="has no callable 'nope'"):
        resolve("rlactors.reward_funcs:nope")
    import threading

    lock = threading.Lock()

    def holds_lock(prompts, completions, **_):
        with lock:
            return [0.0] * len(completions)

    with pytest.raises(RewardError, match="'holds_lock' cannot be pickled"):
        check_picklable([resolve(holds_lock)])
