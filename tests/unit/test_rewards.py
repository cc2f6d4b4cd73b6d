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
    with pytest.raises(RewardError, match='write "module:attr", .* or a reward model\'s folder'):
        resolve("exact_answer")  # reward models: tests/unit/test_reward_model.py
    with pytest.raises(RewardError, match="has no callable 'nope'"):
        resolve("rlactors.reward_funcs:nope")
    import threading

    lock = threading.Lock()

    def holds_lock(prompts, completions, **_):
        with lock:
            return [0.0] * len(completions)

    with pytest.raises(RewardError, match="'holds_lock' cannot be pickled"):
        check_picklable([resolve(holds_lock)])


def test_trls_keywords_reach_the_function_and_what_it_logs_comes_back():
    """TRL's reward keywords: `completion_ids` (a column, one per sample), `log_metric` and
    `log_extra` (their figures come back with the rewards), `trainer_state` where given; a
    function without `**kwargs` gets only what it names."""
    from types import SimpleNamespace

    from rlactors.distributed.scoring import Scores

    def lengths(prompts, completions, completion_ids, trainer_state, log_metric, log_extra, **kwargs):
        log_metric("mean_ids", sum(len(ids) for ids in completion_ids) / len(completion_ids))
        log_extra("ids", [len(ids) for ids in completion_ids])
        return [len(ids) / trainer_state.max_steps for ids in completion_ids]

    def named_only(completions, answer):  # no **kwargs: completion_ids, log_metric, ... are left out
        return [float(c == a) for c, a in zip(completions, answer)]

    columns = {"completion_ids": [[1, 2], [3, 4, 5, 6]], "answer": ["x", "y"]}
    state = {"trainer_state": SimpleNamespace(max_steps=2)}
    out = run_reward("lengths", lengths, ["p", "p"], ["x", "y"], columns, state)
    assert out.values == [1.0, 2.0] and out.metrics == {"mean_ids": [3.0]} and out.extra_columns == {"ids": [2, 4]}
    assert run_reward("named_only", named_only, ["p", "p"], ["x", "z"], columns).values == [1.0, 0.0]

    def flaky(prompts, completions, log_metric, **kwargs):  # raises on the batch: called once per sample
        log_metric("calls", 1.0)
        if len(completions) > 1:
            raise ValueError("one at a time")
        return [1.0]

    retried = run_reward("flaky", flaky, ["p"] * 3, ["a", "b", "c"], {})
    assert retried.values == [1.0] * 3 and retried.metrics == {"calls": [1.0] * 3}  # the failed call's are dropped
    scores = Scores([out.values, retried.values], [out, retried])
    assert scores.logged_metrics() == {"mean_ids": 3.0, "calls": 1.0} and scores.extra_columns() == {"ids": [2, 4]}


def test_reward_inputs_give_each_sample_its_completion_ids():
    from types import SimpleNamespace

    from rlactors.trainer.agent_setup import reward_inputs

    batch = SimpleNamespace(
        trajectories=None,
        completions=["ab", "c"],
        completion_ids=torch.tensor([[5, 6, 0], [7, 0, 0]]),
        completion_mask=torch.tensor([[1, 1, 0], [1, 0, 0]]),
        columns=None,
        environments=None,
    )
    rows = [{"prompt": "p", "answer": "1", "completion_ids": "theirs"}, {"prompt": "q", "answer": "2"}]
    completions, columns = reward_inputs(batch, rows, "prompt")
    assert completions == ["ab", "c"]
    assert columns == {"answer": ["1", "2"], "completion_ids": [[5, 6], [7]]}  # the sample's, not the row's


def test_the_completions_table_shows_the_columns_rewards_logged():
    from rlactors.trainer.metrics import completions_table

    table = completions_table(
        [[{"role": "user", "content": "2+2?"}], "3+3?"],
        ["4", "six"],
        torch.tensor([1.0, 0.0]),
        torch.tensor([0.5, -0.5]),
        None,
        {"judge": ["right", "wrong"], "ragged": [1]},  # a column not one value per sample is left out
    )
    assert table.splitlines() == [
        "prompt | completion | reward | advantage | judge",
        "2+2? | 4 | 1.000 | +0.500 | right",
        "3+3? | six | 0.000 | -0.500 | wrong",
    ]
