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
        "from rlactors.core.config_file import load_config\n"
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


def test_a_first_start_says_triton_builds_the_lora_kernels(monkeypatch, tmp_path, capsys):
    """On CUDA, Triton's cache says whether vLLM's LoRA kernels were built on this machine: before
    the wait the console says a first start builds them, and after it how many were built. (No CUDA
    here: Triton's cache and the engine are stood in for; on a GPU the GPU tests run it for real.)"""
    from types import SimpleNamespace

    from rlactors.core.config import GRPOConfig
    from rlactors.engine import vllm_engine, worker_env
    from rlactors.trainer.launch import say_first_kernel_builds
    from rlactors.workers.rollout import RolloutWorker

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    assert worker_env.lora_kernel_builds() is None  # no CUDA, no Triton: nothing to say
    monkeypatch.setattr(worker_env, "is_cuda", lambda: True)
    assert worker_env.lora_kernel_builds() == 0
    for name in ("a/_lora_shrink_kernel.cubin", "b/_lora_expand_kernel.cubin", "c/other_kernel.cubin"):
        (tmp_path / name).parent.mkdir()
        (tmp_path / name).write_bytes(b"")
    assert worker_env.lora_kernel_builds() == 2

    for cached, said in ((0, True), (2, False), (None, False)):
        say_first_kernel_builds(SimpleNamespace(lora_kernel_builds=lambda cached=cached: cached), prebuild=True)
        out = capsys.readouterr().out
        assert ("Triton builds its LoRA kernels, in child processes while vLLM is imported" in out) == said
    say_first_kernel_builds(SimpleNamespace(lora_kernel_builds=lambda: 0), prebuild=False)
    assert "Triton builds its LoRA kernels, as vLLM starts" in capsys.readouterr().out

    def start(self):  # the engine's start, building one more kernel
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "_lora_shrink_kernel.cubin").write_bytes(b"")
        tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=0)
        return SimpleNamespace(get_tokenizer=lambda: tokenizer)

    monkeypatch.setattr(vllm_engine, "import_vllm", lambda: None)
    monkeypatch.setattr(RolloutWorker, "_start_engine", start)
    worker = RolloutWorker(GRPOConfig(model_name="any/model", output_dir=str(tmp_path / "run")))
    assert worker.lora_kernel_builds() == 2
    worker.build()
    assert list(worker.startup_phases()) == ["import vLLM", "engine (Triton built 1 LoRA kernel)"]
    assert worker.lora_kernel_builds() is None  # its engine is up: nothing more to build


@pytest.fixture
def first_start(monkeypatch, tmp_path):
    """A machine's first start on CUDA, stood in for (no CUDA here; the GPU tests build for real): an
    empty Triton cache, children that only say they started and were waited for, vLLM's import and
    the engine's start saying so too. Yields the list of what happened and a model folder."""
    from types import SimpleNamespace

    from rlactors.engine import vllm_engine, worker_env
    from rlactors.workers import rollout
    from rlactors.workers.rollout import RolloutWorker

    events: list = []

    class Children:
        children = (None, None)

        @classmethod
        def start(cls, model_dir, max_lora_rank, deterministic):
            events.append(("start", model_dir, max_lora_rank, deterministic))
            return cls()

        def wait(self):
            events.append("wait")

    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=0)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setattr(worker_env, "is_cuda", lambda: True)
    monkeypatch.setattr(rollout, "KernelPrebuild", Children)
    monkeypatch.setattr(vllm_engine, "import_vllm", lambda: events.append("import"))
    monkeypatch.setattr(
        RolloutWorker,
        "_start_engine",
        lambda self: events.append("engine") or SimpleNamespace(get_tokenizer=lambda: tokenizer),
    )
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return events, model


def test_a_first_start_builds_the_lora_kernels_in_child_processes_while_vllm_is_imported(first_start, tmp_path):
    """An empty Triton cache on CUDA: the rollout worker starts the children before it imports vLLM
    and waits for them before the engine starts; with kernels in the cache, or the config's switch
    off, it starts none."""
    from rlactors.core.config import GRPOConfig
    from rlactors.workers.rollout import RolloutWorker

    events, model = first_start
    for switch, cached, expected in ((True, False, True), (False, False, False), (True, True, False)):
        events.clear()
        if cached:
            (tmp_path / "triton" / "a").mkdir(parents=True)
            (tmp_path / "triton" / "a" / "_lora_shrink_kernel.cubin").write_bytes(b"")
        config = GRPOConfig(model_name=str(model), vllm_prebuild_lora_kernels=switch, output_dir=str(tmp_path / "run"))
        worker = RolloutWorker(config)
        worker.build()
        started = [("start", str(model), config.max_lora_rank, False), "import", "wait", "engine"]
        assert events == (started if expected else ["import", "engine"])
        assert ("LoRA kernels (2 processes)" in worker.startup_phases()) == expected


def test_vllm_in_this_process_starts_the_kernels_children_before_its_import(first_start, tmp_path):
    """`num_rollout_workers: 0` on a machine's first start: the driver's import of vLLM (beside Ray's
    start) starts the children first, as a rollout actor does, and the engine waits for those instead
    of starting its own after the import; none for a caller's engine, nor with `gpu_memory_utilization:
    auto` (the learner's free memory is measured meanwhile)."""
    from rlactors.core.config import GRPOConfig
    from rlactors.trainer.startup import import_vllm
    from rlactors.workers.rollout import RolloutWorker

    events, model = first_start
    config = GRPOConfig(model_name=str(model), num_rollout_workers=0, output_dir=str(tmp_path / "run"))
    children = import_vllm(config)
    assert children is not None and events == [("start", str(model), config.max_lora_rank, False), "import"]
    worker = RolloutWorker(config, prebuild=children)
    worker.build()
    assert events[2:] == ["import", "wait", "engine"]  # the worker started no children of its own
    assert "LoRA kernels (2 processes)" in worker.startup_phases()

    events.clear()
    assert import_vllm(None) is None  # a caller's engine
    assert import_vllm(config.model_copy(update={"gpu_memory_utilization": "auto"})) is None
    assert events == ["import", "import"]


def test_the_children_build_each_lora_layer_shape_and_are_killed_past_their_time(tmp_path, capsys):
    """The LoRA shapes vLLM makes for the embedded SmolLM2 (Llama) come from its config, split among
    the children; a child still running after the timeout is killed and counts as not clean."""
    import json
    import os

    from rlactors.engine.worker_env import KernelPrebuild, lora_layer_shapes

    model = os.environ.get("RLACTORS_SMOLLM2_DIR", "models/smollm2")
    # hidden 576, 9 query heads and 3 key/value heads of 64, MLP 1536
    assert lora_layer_shapes(model) == [(576, (576, 192, 192)), (576, (576,)), (576, (1536, 1536)), (1536, (576,))]
    (tmp_path / "config.json").write_text(
        json.dumps({"hidden_size": 8, "intermediate_size": 8, "num_attention_heads": 2, "num_local_experts": 4})
    )
    assert lora_layer_shapes(str(tmp_path)) == []  # MoE: other kernels
    assert lora_layer_shapes(str(tmp_path / "missing")) == []
    assert KernelPrebuild.start(str(tmp_path), 8) is None

    prebuild = KernelPrebuild.start(model, 8, processes=3)
    assert len(prebuild.children) == 3
    parts = [json.loads(child.args[-1]) for child in prebuild.children]  # [work, rank, max_loras] each
    work = sorted((size, tuple(slices), tokens) for part in parts for size, slices, tokens in part[0])
    every = sorted(
        (size, slices, tokens) for size, slices in lora_layer_shapes(model) for tokens in (1, 16, 17, 256, 257)
    )
    assert work == every and {(part[1], part[2]) for part in parts} == {(8, 2)}
    assert prebuild.wait(timeout=0.0) == 0  # importing vLLM takes longer: each child killed
    assert all(child.returncode is not None for child in prebuild.children)
    assert capsys.readouterr().err.count("a LoRA kernel prebuild process ended (killed after 0 s)") == 3


def test_vllm_in_this_process_is_awaited_only_once_the_learners_are_asked_for(monkeypatch, capsys):
    """`num_rollout_workers: 0`: the learner actors are asked for while the driver's import of vLLM is
    still running (the first step on one H100: 27.7 s against 38.2 s when they waited for it); the
    engine is made once it is done, and the console says what was left of the import."""
    import threading
    from concurrent.futures import Future
    from types import SimpleNamespace

    from rlactors.core.config import GRPOConfig
    from rlactors.distributed.placement import plan
    from rlactors.trainer import launch

    events: list[str] = []
    importing: Future = Future()

    class Learners:
        local = None

        def __init__(self, *args, **kwargs):
            events.append(f"learners asked for, vLLM imported: {importing.done()}")

        def build(self):
            return [1]

        def startup_phases(self):
            return {"model": 1.0}

    class Rollouts:
        def __init__(self, *args, **kwargs):
            events.append(f"engine made, vLLM imported: {importing.done()}, children: {kwargs.get('prebuild')}")
            self.local = object()

        def build(self):
            return [2]

        def lora_kernel_builds(self):
            return None

        def startup_phases(self):
            return {"import vLLM": 0.0, "engine": 2.0}

    monkeypatch.setattr(launch, "LearnerGroup", Learners)
    monkeypatch.setattr(launch, "RolloutGroup", Rollouts)
    monkeypatch.setattr(launch, "go_on_from_callers_adapter", lambda *args: None)
    cfg = GRPOConfig(dataset="d.jsonl", reward_funcs=["rlactors.reward_funcs:exact_answer"], num_rollout_workers=0)
    layout = plan(cfg, use_gpus=False)
    assert layout.learner and not layout.rollout
    source = SimpleNamespace(in_process=False, release=lambda: None)
    threading.Timer(0.3, importing.set_result, ("the kernels' children",)).start()
    launch.start_workers(cfg, layout, None, source, None, StartupClock(), (), importing)
    assert events == [
        "learners asked for, vLLM imported: False",
        "engine made, vLLM imported: True, children: the kernels' children",
    ]
    said = capsys.readouterr().out
    assert "start-up by worker: vLLM in this process import vLLM 0.3s, engine 2.0s; learner model 1.0s" in said
    # the import's children are a first start, said although they may have filled Triton's cache by now
    assert "Triton builds its LoRA kernels, in child processes while vLLM is imported" in said


def test_train_asks_for_the_workers_while_vllm_still_imports(monkeypatch):
    """`num_rollout_workers: 0`: `train()` goes on to start the workers once Ray is up and the start's
    modules are imported; the import of vLLM for its own engine is still running then (before, the
    learners waited for it: 11.7 s on one H100)."""
    import threading

    from rlactors.trainer import grpo_trainer
    from rlactors.trainer.grpo_trainer import GRPOTrainer

    importing = threading.Event()
    seen = {}

    def start_workers(self):
        seen["vLLM imported"] = self.vllm_import.done()
        importing.set()
        raise RuntimeError("the workers' start, stood in for")

    monkeypatch.setattr(grpo_trainer, "import_vllm", lambda config: importing.wait(30))
    monkeypatch.setattr(GRPOTrainer, "_init_ray", lambda self: False)
    monkeypatch.setattr(GRPOTrainer, "_start_workers", start_workers)
    trainer = GRPOTrainer(
        config={"model_name": "any/model", "max_steps": 1, "num_rollout_workers": 0},
        reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
        train_dataset=[{"prompt": "2+2="}],
    )
    with pytest.raises(RuntimeError, match="stood in for"):
        trainer.train()
    assert seen == {"vLLM imported": False}
