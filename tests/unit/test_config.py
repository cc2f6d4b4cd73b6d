"""Config: every YAML in the repo loads; each bad value is an error naming field, value and fix."""

import glob
import os

import pydantic
import pytest
import yaml

from rlactors.core.config import ConfigError, GRPOConfig
from rlactors.core.config_file import load_config

pytestmark = pytest.mark.unit
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = {"dataset": "examples/arithmetic.jsonl", "reward_funcs": ["rlactors.reward_funcs:exact_answer"]}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "examples", "*.yaml"))))
def test_every_example_config_loads(path):
    config = load_config(path)
    assert config.max_steps > 0 and config.reward_funcs


def test_every_yaml_in_the_repo_parses():
    paths = [p for p in glob.glob(os.path.join(REPO, "**", "*.yaml"), recursive=True) if "/.venv/" not in p]
    assert paths
    for path in paths:
        with open(path) as f:
            assert list(yaml.safe_load_all(f)), path


def test_required_trl_names_exist():
    names = (
        "model_name max_seq_length load_in_4bit gpu_memory_utilization max_lora_rank lora_r lora_alpha "
        "lora_target_modules dataset dataset_split prompt_column reward_funcs reward_weights num_generations "
        "prompts_per_step max_prompt_length max_completion_length temperature top_p learning_rate beta "
        "epsilon epsilon_high loss_type scale_rewards importance_sampling_level num_iterations max_steps "
        "save_steps output_dir seed num_rollout_workers num_learner_workers placement reward_timeout_s "
        "max_logprob_mismatch resume_from_checkpoint report_to"
    ).split()
    assert set(names) <= set(GRPOConfig.model_fields)


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"num_generatons": 4}, "unknown key 'num_generatons'; did you mean 'num_generations'"),
        ({"num_generations": 1}, "num_generations=1: GRPO's group baseline needs at least 2"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization=1.5: must be in (0, 1]"),
        ({"gpu_memory_utilization": 0}, "gpu_memory_utilization=0: must be in (0, 1]"),
        ({"gpu_memory_utilization": 1.0}, "leaves the learner no share"),
        ({"lora_r": 128, "max_lora_rank": 64}, "lora_r=128 exceeds max_lora_rank=64"),
        ({"max_lora_rank": 48}, "max_lora_rank=48: vLLM serves LoRA ranks"),
        ({"loss_type": "ppo"}, "loss_type='ppo'"),
        ({"max_prompt_length": 900, "max_completion_length": 300}, "exceeds max_seq_length (1024)"),
        ({"reward_weights": [1.0, 2.0]}, "reward_weights has 2 entries but reward_funcs has 1"),
        ({"resume_from_checkpoint": "/no/such/dir"}, "resume_from_checkpoint='/no/such/dir'"),
        ({"epsilon_high": 0.1}, "epsilon_high must be >= epsilon"),
        ({"adapter_sync": "nccl"}, "adapter_sync='nccl'"),
        ({"vllm_enable_sleep_mode": True, "max_staleness": 1}, "vllm_enable_sleep_mode=true needs max_staleness: 0"),
        ({"vllm_enable_sleep_mode": True, "placement": "disaggregate"}, "with placement: disaggregate they share none"),
    ],
)
def test_bad_values_name_field_value_and_fix(override, expected):
    with pytest.raises(ConfigError) as err:
        GRPOConfig.from_dict({**BASE, **override}, source="run.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("run.yaml: ")


def test_overrides_and_frozen(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    config = load_config(str(path), ["max_steps=3", "lora_target_modules=[q_proj, v_proj]"])
    assert config.max_steps == 3 and config.lora_target_modules == ["q_proj", "v_proj"]
    with pytest.raises(pydantic.ValidationError):
        config.max_steps = 5  # frozen after load
    with pytest.raises(ConfigError, match="write KEY=VALUE"):
        load_config(str(path), ["max_steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_resolved_yaml_round_trips():
    config = GRPOConfig.from_dict(BASE)
    assert GRPOConfig.from_dict(yaml.safe_load(config.to_yaml())) == config


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "cluster", "*"))))
def test_cluster_templates_turn_on_token_auth(path):
    with open(path) as f:
        text = f.read()
    assert "RAY_AUTH_MODE" in text and "token" in text
    assert "0.0.0.0" not in text or "kuberay" in path  # in-cluster pods only; nothing else listens beyond loopback


def test_runtime_env_excludes_outputs_and_weights():
    with open(os.path.join(REPO, "cluster", "runtime_env.yaml")) as f:
        excludes = yaml.safe_load(f)["excludes"]
    for needed in (".git", ".venv", "runs", "models", "*.safetensors"):
        assert needed in excludes


def test_warns_for_a_remote_cluster_without_token_auth(tmp_path):
    from rlactors.distributed.cluster import insecure_address_warning

    no_file = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}
    assert "without token authentication" in insecure_address_warning("http://10.0.0.5:8265", no_file)
    assert "10.0.0.5:6379" in insecure_address_warning("10.0.0.5:6379", {**no_file, "RAY_AUTH_MODE": "token"})
    assert insecure_address_warning("10.0.0.5:6379", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x"}) is None
    token_file = tmp_path / "auth_token"
    token_file.write_text("x")
    assert (
        insecure_address_warning("ray://head:10001", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)})
        is None
    )
    for local in ("127.0.0.1:6379", "http://localhost:8265", "auto", "local"):
        assert insecure_address_warning(local, no_file) is None
