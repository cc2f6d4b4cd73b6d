"""TRL's reward models (`rlactors.workers.reward_model`, `rlactors.distributed.reward_models`): the
scores are the classifier's first logit at each sample's last token, padding or not; a
`reward_funcs` entry that names a model becomes one."""

import os
import pickle

import pytest
import torch

from rlactors.core.config import GRPOConfig
from rlactors.distributed.reward_models import RewardModel, looks_like_model
from rlactors.trainer.arguments import reward_models, rewards
from rlactors.workers.reward_model import RewardModelWorker

pytestmark = pytest.mark.unit


def _worker(path, tmp_path, tokenizer=None):
    worker = RewardModelWorker(GRPOConfig(output_dir=str(tmp_path)), 0, [(path, tokenizer)])
    worker.build()
    return worker


def test_a_reward_model_scores_each_sample_as_alone_whatever_the_padding(tiny_reward_model, tmp_path):
    worker = _worker(tiny_reward_model, tmp_path)
    prompts, completions = ["What is 2+2?", "Name a colour."], [" 4", " A long answer about the colour blue, really."]
    scores = worker.score(prompts, completions)
    alone = []
    for text in (p + c for p, c in zip(prompts, completions)):
        ids = worker.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            alone.append(worker.model(**ids).logits[0, 0].item())
    assert scores == pytest.approx(alone, abs=1e-5) and scores[0] != scores[1]
    # conversational samples: prompt and completion messages through the reward tokenizer's chat template
    chat = [[{"role": "user", "content": "What is 2+2?"}]]
    answer = [[{"role": "assistant", "content": "4"}]]
    text = worker.tokenizer.apply_chat_template(chat[0] + answer[0], tokenize=False)
    assert worker.score(chat, answer) == pytest.approx(worker.score([text], [""]), abs=1e-5)


def test_reward_funcs_entries_that_name_models_become_reward_models(tiny_reward_model, tmp_path):
    from transformers import AutoTokenizer

    assert looks_like_model(tiny_reward_model) and looks_like_model("org/reward-model")
    assert not looks_like_model("rlactors.reward_funcs:exact_answer") and not looks_like_model(str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model)
    specs = reward_models([tiny_reward_model, "rlactors.reward_funcs:exact_answer"], [tokenizer, None])
    assert (
        isinstance(specs[0], RewardModel)
        and specs[0].tokenizer is tokenizer
        and specs[1] == "rlactors.reward_funcs:exact_answer"
    )
    functions, weights = rewards([tiny_reward_model, "rlactors.reward_funcs:exact_answer"], GRPOConfig())
    assert [f.name for f in functions] == ["tiny-rm", "exact_answer"] and weights == [1.0, 1.0]
    sent = pickle.loads(pickle.dumps(functions[0].fn))  # what a reward task gets: the actor's name
    assert sent.actor == "rlactors/reward-model-0" and sent.source is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="reward_funcs entry '.*empty': no reward model loads from it"):
        _worker(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(ValueError, match="reward_processing_classes has 1 entries for 2 reward functions"):
        reward_models([tiny_reward_model, "m:f"], [tokenizer])


def test_a_loaded_reward_model_is_saved_into_the_run_folder_for_its_actor(tiny_reward_model, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model, num_labels=1)
    reward = RewardModel(model, index=1)
    folder = reward.folder(str(tmp_path))
    assert folder == os.path.join(str(tmp_path), "reward_models", "tiny-rm") and reward.actor.endswith("-1")
    worker = _worker(folder, tmp_path, tokenizer=_worker(tiny_reward_model, tmp_path).tokenizer)
    assert worker.score(["a"], ["b"]) == pytest.approx(
        _worker(tiny_reward_model, tmp_path).score(["a"], ["b"]), abs=1e-6
    )
