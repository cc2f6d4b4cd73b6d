"""GRPOTrainer's arguments in TRL's shape and rlactors' first one, and what a given model decides."""

import pytest

from rlactors.core.config import ConfigError, GRPOConfig
from rlactors.trainer import arguments, model_source

pytestmark = pytest.mark.unit


def test_the_first_argument_is_the_config_or_the_model(tmp_path):
    config = GRPOConfig(max_steps=3)
    assert arguments.config_and_model(config, None, None) == (config, None)
    assert arguments.config_and_model({"max_steps": 4}, None, None)[0].max_steps == 4
    path = tmp_path / "run.yaml"
    path.write_text("max_steps: 5\n")
    assert arguments.config_and_model(str(path), None, None)[0].max_steps == 5
    assert arguments.config_and_model("models/some-model", config, None) == (config, "models/some-model")
    assert arguments.config_and_model(None, None, None)[0] == GRPOConfig()
    with pytest.raises(ConfigError, match="the config twice"):
        arguments.config_and_model(config, config, None)


def test_trls_own_config_class_is_refused_with_the_fix():
    trl = pytest.importorskip("trl")
    with pytest.raises(ConfigError, match="pass rlactors.GRPOConfig"):
        arguments.config_and_model(
            None, trl.GRPOConfig(output_dir="x", report_to="none", bf16=False, use_cpu=True), None
        )


def test_trl_arguments_with_no_use_here_are_refused():
    with pytest.raises(ConfigError, match="optimizers"):
        arguments.refuse_unsupported((object(), None))


def test_reward_funcs_may_be_one_callable():
    def one(prompts, completions, **_):
        return [1.0] * len(completions)

    functions, weights = arguments.rewards(one, GRPOConfig())
    assert [f.name for f in functions] == ["one"] and weights == [1.0]


def test_a_model_id_with_a_peft_config_names_the_model_and_lora():
    from peft import LoraConfig

    source = model_source.from_argument(
        "my/model", LoraConfig(r=32, lora_alpha=64, target_modules="all-linear"), GRPOConfig()
    )
    assert source.updates["model_name"] == "my/model" and source.updates["lora_r"] == 32
    assert len(source.updates["lora_target_modules"]) == 7 and source.model is None
    with pytest.raises(ConfigError, match="use_dora=True"):
        model_source.lora_fields(LoraConfig(r=8, use_dora=True, target_modules=["q_proj"]))


def test_a_peft_model_is_trained_in_process_unless_workers_are_asked_for(tiny_llama, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from peft import get_peft_model_state_dict as peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from rlactors.workers.learner import LearnerWorker

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    source = model_source.from_argument(peft_model, None, GRPOConfig())
    assert source.in_process and source.model is peft_model and source.engine is None
    config = source.configure(GRPOConfig(learning_rate=1e-3))
    assert config.model_name == tiny_llama and config.lora_r == 8 and config.lora_target_modules == ["q_proj", "v_proj"]
    assert config.num_rollout_workers == 0 and config.num_learner_workers == 0 and config.learning_rate == 1e-3
    remote = model_source.from_argument(peft_model, None, GRPOConfig(num_rollout_workers=2))
    assert not remote.in_process and "num_rollout_workers" not in remote.updates
    with pytest.raises(ConfigError, match="drop peft_config"):
        model_source.from_argument(peft_model, LoraConfig(r=4), GRPOConfig())
    # A fresh adapter (PEFT's lora_B are zeros) is the base model: nothing to carry. A trained one is
    # what the run goes on from, as version 0.
    assert source.starting_adapter() is None
    trained = next(p for name, p in peft_model.named_parameters() if "lora_B" in name)
    with torch.no_grad():
        trained.fill_(0.5)
    adapter = source.starting_adapter()
    assert adapter.version == 0 and set(adapter.tensors) == set(peft_model_state_dict(peft_model))
    assert sum(bool(t.any()) for k, t in adapter.tensors.items() if "lora_B" in k) == 1
    learner = LearnerWorker(
        GRPOConfig(model_name=tiny_llama, lora_r=8, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"])
    )
    assert learner.load_adapter(adapter) == 0  # a learner actor, which starts fresh, takes it
    assert all(torch.equal(t, adapter.tensors[k]) for k, t in learner.export_adapter().tensors.items())


def test_trls_quantization_config_loads_a_named_model_in_4_bits():
    """TRL's `GRPOTrainer(model="id", quantization_config=BitsAndBytesConfig(...))`: 4-bit NF4 is
    `load_in_4bit` (bf16 or fp16 compute is the run's dtype); what rlactors cannot load is refused."""
    import torch
    from transformers import BitsAndBytesConfig

    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    source = model_source.from_argument("my/model", None, GRPOConfig(), nf4)
    assert source.updates == {"model_name": "my/model", "load_in_4bit": True, "dtype": "bfloat16"}
    config = source.configure(GRPOConfig(load_in_4bit=False))  # the argument wins, with the usual note
    assert config.load_in_4bit and config.dtype == "bfloat16"
    with pytest.warns(UserWarning, match=r"bnb_4bit_quant_type='fp4': rlactors loads 4-bit bases as NF4"):
        unset = model_source.from_argument(None, None, GRPOConfig(), BitsAndBytesConfig(load_in_4bit=True))
    assert unset.updates == {"load_in_4bit": True}  # compute dtype unset (float32): the run's dtype stays
    with pytest.raises(ConfigError, match=r"quantization_config=BitsAndBytesConfig without load_in_4bit=True"):
        model_source.from_argument("my/model", None, GRPOConfig(), BitsAndBytesConfig(load_in_8bit=True))


def test_quantization_config_beside_a_loaded_model_is_ignored_with_a_warning_as_in_trl(tiny_llama):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with pytest.warns(UserWarning, match=r"quantization_config=\.\.\.\) is ignored: the model is loaded already"):
        source = model_source.from_argument(model, None, GRPOConfig(), BitsAndBytesConfig(load_in_4bit=True))
    assert source.updates["load_in_4bit"] is False


def test_the_trainers_parameters_are_trls_in_trls_order():
    """A TRL script's call, by keyword or by position, binds to the same arguments here."""
    import inspect

    trl = pytest.importorskip("trl")
    from rlactors.trainer.grpo_trainer import GRPOTrainer

    for method in ("__init__", "train"):
        ours = list(inspect.signature(getattr(GRPOTrainer, method)).parameters)
        theirs = list(inspect.signature(getattr(trl.GRPOTrainer, method)).parameters)
        assert ours[: len(theirs)] == theirs, method


def test_train_takes_transformers_resume_from_checkpoint(tmp_path):
    """`trainer.train(resume_from_checkpoint=True | folder)`, as transformers' Trainer reads it."""
    from rlactors.trainer import checkpoints

    config = GRPOConfig(output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"resume_from_checkpoint=True\): no checkpoint in output_dir="):
        checkpoints.resume_target(config, True)
    with pytest.raises(ConfigError, match=r"resume_from_checkpoint='nope'\): pass True .* or an existing"):
        checkpoints.resume_target(config, "nope")
    (tmp_path / "checkpoint-3").mkdir()
    assert checkpoints.resume_target(config, str(tmp_path / "checkpoint-3")) == str(tmp_path / "checkpoint-3")
    with pytest.raises(ConfigError, match="rlactors has no hyperparameter search"):
        arguments.refuse_unsupported_train({"lr": 1.0}, None)
    with pytest.raises(ConfigError, match="ignore_keys_for_eval"):
        arguments.refuse_unsupported_train(None, ["past_key_values"])


def test_callbacks_are_added_and_removed_as_in_trl_and_args_is_the_config():
    from transformers import TrainerCallback

    from rlactors.trainer.grpo_trainer import GRPOTrainer

    class Printer(TrainerCallback):
        pass

    config = GRPOConfig(model_name="any/model", max_steps=1)
    trainer = GRPOTrainer(config, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)])
    assert trainer.args is trainer.config and trainer.args.max_steps == 1
    mine = Printer()
    trainer.add_callback(Printer)  # a class is made, as transformers does
    trainer.add_callback(mine)
    assert [type(c) for c in trainer.callbacks.callbacks] == [Printer, Printer]
    first = trainer.pop_callback(Printer)
    assert first is not mine and trainer.callbacks.callbacks == [mine]
    trainer.remove_callback(mine)
    assert trainer.callbacks.callbacks == [] and trainer.pop_callback(Printer) is None
    trainer.remove_callback(Printer)  # a class with no instance left: nothing to do, as in transformers
    with pytest.raises(ValueError, match="is not one of the trainer's callbacks"):
        trainer.remove_callback(mine)
    with pytest.raises(TypeError, match="is not a transformers TrainerCallback"):
        trainer.add_callback(object())
    with pytest.raises(NotImplementedError, match="push_to_hub: rlactors writes the trained adapter to output_dir"):
        trainer.push_to_hub()
