"""The console's account of a run's start: each phase announced and timed, summed up once."""

import pytest

from rlactors.trainer.startup import StartupClock

pytestmark = pytest.mark.unit


def test_each_phase_is_said_and_the_first_step_sums_them_up_once(capsys):
    clock = StartupClock()
    with clock.phase("vLLM", "starting vLLM"):
        pass
    with clock.phase("Ray"):  # not announced: quick
        pass
    clock.first_step({"generate": 1.25, "update": 2.0, "score": 0.1})
    clock.first_step({"generate": 9.0})
    said = capsys.readouterr().out.splitlines()
    assert said[0] == "rlactors: starting vLLM ..." and said[1].startswith("rlactors: vLLM ready in ")
    assert len(said) == 3 and "Ray 0.0s" in said[2] and said[2].endswith("the step: generate 1.2s, update 2.0s")


def test_the_first_step_says_the_learners_own_share_of_the_update(capsys):
    row = {"time/learner_forward_backward_s": 1.54, "time/learner_optimizer_s": 0.21}
    StartupClock().first_step({"generate": 1.0, "update": 2.0}, row)
    assert (
        capsys.readouterr()
        .out.rstrip()
        .endswith("update 2.0s (in the learner: forward and backward 1.5s, optimizer 0.2s)")
    )


def test_each_workers_start_is_said_by_phase_and_an_empty_one_is_left_out(capsys):
    StartupClock().workers(
        {"vLLM worker": {"process and imports": 8.04, "engine": 24.5}, "learner": {"model": 5.25}, "other": {}}
    )
    StartupClock().workers({"learner": {}})  # nothing timed (a caller's model, no GPU): nothing said
    assert capsys.readouterr().out.splitlines() == [
        "rlactors: start-up by worker: vLLM worker process and imports 8.0s, engine 24.5s; learner model 5.2s"
    ]


def test_the_trainer_imports_no_torch_until_ray_starts_beside_it():
    """`python -m rlactors train` reaches Ray's start before torch: `train()` imports torch and the
    workers' modules (`START_MODULES`) in a thread beside it."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from rlactors.core.config import load_config\n"
        "from rlactors.trainer.grpo_trainer import GRPOTrainer\n"
        "before = 'torch' in sys.modules\n"
        "from rlactors.trainer.startup import import_start_modules\n"
        "import_start_modules()\n"
        "print(before, 'torch' in sys.modules, 'rlactors.workers.rollout' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "True", "True"], done.stderr[-2000:]


def test_prompts_that_failed_to_load_fail_the_start_before_its_placement(monkeypatch):
    """`train()` loads the prompts beside Ray's start: their error, once raised, stops the start
    before it reserves the GPUs and starts the workers."""
    from concurrent.futures import Future

    from rlactors.distributed import placement
    from rlactors.trainer.grpo_trainer import GRPOTrainer
    from rlactors.trainer.prompts import DatasetError

    def reserve(*args, **kwargs):
        raise AssertionError("the placement was reserved")

    monkeypatch.setattr(placement, "reserve", reserve)
    monkeypatch.setattr(placement, "cluster_has_gpus", lambda: False)
    trainer = GRPOTrainer(
        config={"model_name": "any/model", "max_steps": 1},
        reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
    )
    failed: Future = Future()
    failed.set_exception(DatasetError("prompt_column='text' is not a column of the dataset"))
    with pytest.raises(DatasetError, match="prompt_column='text'"):
        trainer._start(failed)
