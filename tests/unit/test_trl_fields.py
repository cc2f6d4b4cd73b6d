"""TRL's GRPOConfig field names: every one is placed (a TRL upgrade that adds one fails here), and a
TRL/Unsloth-shaped config builds the run it describes."""

import dataclasses
import warnings

import pytest

from rlactors.core import trl_fields
from rlactors.core.config import ConfigError, GRPOConfig

pytestmark = pytest.mark.unit


def test_every_trl_field_is_implemented_translated_or_listed_with_its_reason():
    trl = pytest.importorskip("trl")
    ours = set(GRPOConfig.model_fields)
    unplaced = [
        f.name
        for f in dataclasses.fields(trl.GRPOConfig)
        if f.name not in ours | set(trl_fields.TRANSLATED) | set(trl_fields.NOT_HERE) | set(trl_fields.NOT_YET)
    ]
    assert not unplaced, f"TRL fields with no place in rlactors: {unplaced}; add them to rlactors/core/trl_fields.py"
    assert all(reason.strip() for reason in trl_fields.NOT_HERE.values())


def test_trl_defaults_of_features_not_here_yet_are_accepted():
    trl = pytest.importorskip("trl")
    defaults = {f.name: f.default for f in dataclasses.fields(trl.GRPOConfig) if f.name in trl_fields.NOT_YET}
    assert defaults == trl_fields.NOT_YET  # the defaults listed are TRL's own
    GRPOConfig(**defaults)


def test_an_unsloth_notebook_config_builds_the_run_it_describes():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = GRPOConfig(
            learning_rate=5e-6,
            adam_beta1=0.9,
            adam_beta2=0.99,
            weight_decay=0.1,
            warmup_ratio=0.1,
            lr_scheduler_type="cosine",
            optim="paged_adamw_8bit",
            logging_steps=1,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=1,
            num_generations=6,
            max_prompt_length=256,
            max_completion_length=200,
            max_steps=250,
            save_steps=250,
            max_grad_norm=0.1,
            report_to="none",
            output_dir="outputs",
            use_vllm=True,
            vllm_mode="colocate",
        )
    messages = [str(w.message) for w in caught]
    assert config.prompts_per_step == 1 and config.micro_batch_size == 6  # raised to num_generations, as Unsloth
    assert config.adam_beta2 == 0.99 and config.optim == "paged_adamw_8bit" and config.lr_scheduler_type == "cosine"
    assert config.warmup_steps == 0.1 and config.report_to == ["jsonl"]
    assert sum("per_device_train_batch_size raised to 6" in m for m in messages) == 1
    ignored = [m for m in messages if "no effect here" in m]
    assert len(ignored) == 1 and "use_vllm" in ignored[0] and "vllm_mode" in ignored[0]


@pytest.mark.parametrize(
    "trl, ours",
    [
        (
            {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "num_generations": 4},
            {"prompts_per_step": 4, "micro_batch_size": 8},
        ),
        ({"generation_batch_size": 32, "num_generations": 8}, {"prompts_per_step": 4, "num_mini_batches": 4}),
        (
            {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "steps_per_generation": 4},
            {"prompts_per_step": 4, "micro_batch_size": 8, "num_mini_batches": 2},
        ),
        (
            {"per_device_train_batch_size": 4, "steps_per_generation": 2, "num_generations": 4, "max_steps": 7},
            {"prompts_per_step": 2, "num_mini_batches": 2, "max_steps": 4},
        ),
        (
            {"per_device_train_batch_size": 4, "num_learner_workers": 2, "num_generations": 4},
            {"prompts_per_step": 2, "micro_batch_size": 4},
        ),
        ({"bf16": True}, {"dtype": "bfloat16"}),
        ({"fp16": True}, {"dtype": "float16"}),
        ({"report_to": "all"}, {"report_to": ["jsonl", "tensorboard", "wandb", "mlflow"]}),
        ({"report_to": ["tensorboard"]}, {"report_to": ["jsonl", "tensorboard"]}),
        ({"report_to": None}, {"report_to": ["jsonl"]}),
        ({"shuffle_dataset": False, "save_total_limit": 2}, {"shuffle": False, "keep_last": 2}),
        ({"save_strategy": "no"}, {"save_steps": 0}),
        ({"disable_tqdm": True}, {"progress_bar": False}),
        ({"vllm_gpu_memory_utilization": 0.3}, {"gpu_memory_utilization": 0.3}),
        ({"num_train_epochs": 2}, {"max_steps": None, "num_train_epochs": 2.0}),
        ({"max_steps": -1}, {"max_steps": None, "num_train_epochs": 3.0}),
        ({"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 5}, {"lr_scheduler_type": "constant"}),
        (
            {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.1}},
            {"lr_scheduler_type": "cosine", "min_lr_rate": 0.1},
        ),
        (
            {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr": 2e-6}, "learning_rate": 1e-5},
            {"lr_scheduler_type": "cosine", "min_lr_rate": pytest.approx(0.2)},
        ),
        ({"lr_scheduler_type": "cosine", "lr_scheduler_kwargs": {"num_cycles": 0.5}}, {"min_lr_rate": 0.0}),
        ({"max_seq_length": 256}, {"max_prompt_length": 128, "max_completion_length": 128}),
        ({"top_k": 50, "min_p": 0.05, "repetition_penalty": 1.1}, {"top_k": 50, "min_p": 0.05}),
        ({"pad_to_multiple_of": "auto"}, {"pad_to_multiple_of": None}),  # TRL's default: pads on AWS Neuron only
        ({"pad_to_multiple_of": "16"}, {"pad_to_multiple_of": 16}),
    ],
)
def test_trl_fields_map_to_rlactors(trl, ours):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = GRPOConfig(**trl)
    assert {key: getattr(config, key) for key in ours} == ours


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"steps_per_generation": 3, "gradient_accumulation_steps": 2}, "make steps_per_generation a multiple"),
        ({"steps_per_generation": 2, "generation_batch_size": 16}, "are both given"),
        ({"generation_batch_size": 12, "num_generations": 8}, "generation_batch_size=12 is not a multiple"),
        ({"prompts_per_step": 2, "per_device_train_batch_size": 8}, "prompts_per_step=2 given with TRL's"),
        ({"sync_ref_model": True}, "sync_ref_model=True: rlactors does not implement"),
        ({"lr_scheduler_type": "polynomial"}, "lr_scheduler_type='polynomial'"),
        ({"lr_scheduler_type": "cosine_with_min_lr"}, "give one of min_lr_rate"),
        ({"lr_scheduler_type": "cosine", "lr_scheduler_kwargs": {"num_cycles": 2}}, "rlactors takes only"),
        ({"lr_scheduler_type": "linear", "min_lr_rate": 0.1}, "the floor is the cosine decay's"),
        ({"bf16": True, "fp16": True}, "bf16=True and fp16=True"),
        ({"bf16": True, "dtype": "float32"}, "bf16=True with dtype='float32'"),
        ({"save_strategy": "epoch"}, "save_strategy='epoch'"),
        ({"warmup_steps": 2.5}, "warmup_steps=2.5: give a whole number"),
        ({"optim": "sgd"}, "optim='sgd'"),
        ({"pad_to_multiple_of": 0}, "pad_to_multiple_of=0"),
        ({"loss_type": "vespo", "vllm_importance_sampling_mode": "sequence_mask"}, "vespo needs"),
    ],
)
def test_trl_values_rlactors_cannot_honour_are_errors_that_say_so(values, expected):
    with pytest.raises(ConfigError, match="^GRPOConfig: ") as err:
        GRPOConfig(**values)
    assert expected in str(err.value)


def test_fractions_of_max_steps():
    config = GRPOConfig(max_steps=40, warmup_steps=0.1, logging_steps=0.25)
    assert config.steps_of(config.warmup_steps) == 4 and config.steps_of(config.logging_steps) == 10
    assert GRPOConfig(logging_steps=3).steps_of(3) == 3


def test_liger_kernels_are_accepted_with_the_reason():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GRPOConfig(use_liger_kernel=True)
    assert any("use_liger_kernel" in str(w.message) and "the loss is the same" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    "trl_name, kwargs",
    [("constant_with_warmup", {}), ("linear", {}), ("cosine", {}), ("cosine_with_min_lr", {"min_lr_rate": 0.1})],
)
def test_the_lr_schedule_is_transformers_own_after_the_warm_up(trl_name, kwargs):
    """Step by step the lr multiplier transformers' scheduler of that name gives, after the warm-up;
    during it rlactors starts at 1/warmup (transformers at 0: its first step is spent unchanged)."""
    import torch
    from transformers import get_scheduler

    from rlactors.workers.optim import schedule

    values = {"lr_scheduler_type": trl_name, "lr_scheduler_kwargs": kwargs, "warmup_steps": 3, "max_steps": 12}
    ours = schedule(GRPOConfig(**values))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = get_scheduler(trl_name, optimizer, 3, 12, scheduler_specific_kwargs=kwargs).lr_lambdas[0]
    assert [ours(step) for step in range(3, 12)] == pytest.approx([theirs(step) for step in range(3, 12)])
    assert [ours(step) for step in range(3)] == pytest.approx([theirs(step + 1) for step in range(3)])
