"""GRPO math: numbers worked out by hand, and TRL's own `_compute_loss` on random inputs."""

import math
import types
from collections import defaultdict

import pytest
import torch

from rlactors.core import algorithm

pytestmark = pytest.mark.unit


def test_group_advantages_by_hand():
    # group 1: rewards 1, 0 -> mean 0.5, unbiased std 0.7071 -> +-0.5/(0.7071+1e-4)
    # group 2: rewards 2, 2 -> std 0 -> advantages 0, flagged zero-std
    out = algorithm.group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), num_generations=2)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert torch.allclose(out.advantages, torch.tensor([a, -a, 0.0, 0.0]), atol=1e-6)
    assert out.zero_std.tolist() == [False, False, True, True]


def test_scale_rewards_none_and_batch():
    rewards = torch.tensor([1.0, 0.0, 3.0, 1.0])
    none = algorithm.group_advantages(rewards, 2, "none").advantages
    assert none.tolist() == [0.5, -0.5, 1.0, -1.0]
    batch = algorithm.group_advantages(rewards, 2, "batch").advantages
    std = torch.tensor([1.0, 0.0, 3.0, 1.0]).std().item()  # 1.2910
    assert torch.allclose(batch, torch.tensor([0.5, -0.5, 1.0, -1.0]) / (std + 1e-4), atol=1e-6)


def test_missing_rewards_leave_the_baseline_and_get_zero_advantage():
    # group: 1, NaN, 0 -> baseline over {1, 0}; the NaN sample gets advantage 0
    out = algorithm.group_advantages(torch.tensor([1.0, float("nan"), 0.0]), num_generations=3)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert torch.allclose(out.advantages, torch.tensor([a, 0.0, -a]), atol=1e-6)
    all_missing = algorithm.group_advantages(torch.full((2,), float("nan")), 2)
    assert all_missing.advantages.tolist() == [0.0, 0.0]


def test_combine_rewards_weights_and_all_missing_row():
    per_fn = torch.tensor([[1.0, 0.5], [float("nan"), 1.0], [float("nan"), float("nan")]])
    out = algorithm.combine_rewards(per_fn, torch.tensor([1.0, 2.0]))
    assert out[0].item() == 2.0 and out[1].item() == 2.0 and math.isnan(out[2].item())


def test_k3_kl_by_hand():
    # logp = log 0.5, ref = log 0.25: delta = log 0.5; exp(delta) - delta - 1 = 0.5 + 0.6931 - 1
    kl = algorithm.k3_kl(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert kl.item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)


def test_clipped_loss_by_hand():
    # one sample, two tokens, advantage +1; ratios e^0.5=1.6487 (clipped to 1.2) and 1.0
    logp = torch.tensor([[0.5, 0.0]])
    old = torch.zeros(1, 2)
    out = algorithm.policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), loss_type="grpo")
    assert out.loss.item() == pytest.approx(-(1.2 + 1.0) / 2, abs=1e-6)
    assert out.clipped_high.tolist() == [[True, False]]
    # negative advantage: min(-1.6487, -1.2) = -1.6487 -> loss 1.6487 (unclipped side)
    neg = algorithm.policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 2), loss_type="grpo")
    assert neg.loss.item() == pytest.approx((math.exp(0.5) + 1.0) / 2, abs=1e-6)


def test_loss_normalisers_by_hand():
    # per-token loss = -advantage * 1 when logp == old; two samples of lengths 1 and 3
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, 2.0])
    loss = lambda t, **kw: algorithm.policy_loss(logp, logp, adv, mask, loss_type=t, **kw).loss.item()
    assert loss("grpo") == pytest.approx(-(1 + 2) / 2)  # per-sequence means: -1, -2
    assert loss("bnpo") == pytest.approx(-(1 + 6) / 4)  # token mean
    assert loss("dapo") == pytest.approx(-(1 + 6) / 4)
    assert loss("dapo", num_items=14) == pytest.approx(-(1 + 6) / 14)
    assert loss("dr_grpo", max_completion_length=5) == pytest.approx(-(1 + 6) / (2 * 5))


def test_sequence_level_ratio_is_geometric_mean():
    logp = torch.tensor([[0.2, 0.4]])
    out = algorithm.policy_loss(
        logp,
        torch.zeros(1, 2),
        torch.tensor([1.0]),
        torch.ones(1, 2),
        importance_sampling_level="sequence",
        epsilon=10.0,
    )
    assert out.ratio.item() == pytest.approx(math.exp(0.3), abs=1e-6)


def test_selective_logprobs_with_temperature():
    logits = torch.tensor([[[2.0, 0.0, 0.0]]])
    got = algorithm.selective_logprobs(logits, torch.tensor([[0]]), temperature=2.0)
    assert got.item() == pytest.approx(1.0 - math.log(math.e + 2), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_logprobs_chunked_matches_log_softmax_values_and_gradients(dtype, monkeypatch):
    monkeypatch.setattr(algorithm, "LOGPROB_CHUNK_ELEMENTS", 2 * 7 * 50)  # 2 rows per chunk, 3 chunks
    gen = torch.Generator().manual_seed(0)
    base = (torch.randn(5, 8, 50, generator=gen) * 3).to(dtype)
    ids = torch.randint(0, 50, (5, 7), generator=gen)
    weights = torch.randn(5, 7, generator=gen)
    grads = []
    for fn in (
        lambda x: algorithm.selective_logprobs(x[:, :-1], ids, temperature=0.7),
        lambda x: torch.log_softmax(x[:, :-1].float() / 0.7, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1),
    ):
        x = base.clone().requires_grad_(True)
        out = fn(x)
        (out * weights).sum().backward()
        grads.append((out.detach(), x.grad))
    (got, got_grad), (want, want_grad) = grads
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-5)
    assert got_grad.dtype == dtype and got_grad[:, -1].abs().sum() == 0
    assert torch.allclose(got_grad.float(), want_grad.float(), atol=1e-5 if dtype == torch.float32 else 1e-2)


def test_entropy_comes_from_the_same_chunks_and_leaves_the_gradient_alone(monkeypatch):
    monkeypatch.setattr(algorithm, "LOGPROB_CHUNK_ELEMENTS", 2 * 7 * 50)  # 2 rows per chunk, 3 chunks
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(5, 7, 50, generator=gen) * 3
    ids = torch.randint(0, 50, (5, 7), generator=gen)
    x = base.clone().requires_grad_(True)
    logp, entropy = algorithm.logprobs_and_entropy(x, ids, temperature=0.7)
    logp.sum().backward()
    want = torch.distributions.Categorical(logits=base / 0.7).entropy()
    assert not entropy.requires_grad and torch.allclose(entropy, want, atol=1e-5)
    y = base.clone().requires_grad_(True)
    algorithm.selective_logprobs(y, ids, temperature=0.7).sum().backward()
    assert torch.equal(logp.detach(), algorithm.selective_logprobs(base, ids, temperature=0.7))
    assert torch.equal(x.grad, y.grad)


def test_entropy_gradient_matches_autograd_through_softmax(monkeypatch):
    """With entropy_grad, a loss on both outputs has autograd's gradient through log_softmax."""
    monkeypatch.setattr(algorithm, "LOGPROB_CHUNK_ELEMENTS", 2 * 7 * 50)  # 2 rows per chunk, 3 chunks
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(5, 7, 50, generator=gen, dtype=torch.float64).float() * 3
    ids = torch.randint(0, 50, (5, 7), generator=gen)
    w_logp, w_ent = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    grads = []
    for with_logp in (True, False):
        x = base.clone().requires_grad_(True)
        logp, entropy = algorithm.logprobs_and_entropy(x, ids, temperature=0.7, entropy_grad=True)
        ((logp * w_logp).sum() * with_logp + (entropy * w_ent).sum()).backward()
        y = base.clone().requires_grad_(True)
        logq = torch.log_softmax(y / 0.7, -1)
        want_ent = -(logq.exp() * logq).sum(-1)
        want_logp = logq.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        ((want_logp * w_logp).sum() * with_logp + (want_ent * w_ent).sum()).backward()
        assert torch.allclose(x.grad, y.grad, atol=1e-5), with_logp
        grads.append(x.grad)
    assert not torch.allclose(grads[0], grads[1])


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="loss_type='ppo'"):
        algorithm.policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), loss_type="ppo")
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        algorithm.group_advantages(torch.zeros(4), 3)


# ---- cross-check with TRL's GRPOTrainer._compute_loss on random inputs ------------------------------


def _trl_loss(
    logp, old, ref, adv, mask, loss_type, level, beta, eps_low, eps_high, max_len, is_ratio=None, quantile=1.0, **extra
):
    from trl.trainer.grpo_trainer import GRPOTrainer

    entropies = extra.pop("entropies", torch.zeros_like(logp))
    opsm = extra.pop("opsm", None)
    sampling = extra.pop("sampling_per_token_logps", None)
    state = extra.pop("state", None)  # the entropy bonus's attributes, carried from call to call
    accelerator = types.SimpleNamespace(
        gather=lambda x: x,
        num_processes=1,
        sync_gradients=True,
        reduce=lambda x, reduction="sum": x,
        pad_across_processes=lambda x, dim=0, pad_index=0: x,
    )
    args = types.SimpleNamespace(**{"delta": None, "use_bias_correction_kl": False, **extra})
    fake = types.SimpleNamespace(
        top_entropy_quantile=quantile,
        off_policy_mask_threshold=opsm,
        importance_sampling_level=level,
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        args=args,
        use_vllm=is_ratio is not None,
        vllm_importance_sampling_correction=is_ratio is not None,
        max_completion_length=max_len,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        accelerator=accelerator,
        _metrics={"train": defaultdict(list)},
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        use_adaptive_entropy=False,
    )
    if state is not None:
        vars(fake).update(state)
    fake._get_per_token_logps_and_entropies = lambda *a, **k: (logp, entropies, None)
    fake.get_high_entropy_mask = lambda *a: GRPOTrainer.get_high_entropy_mask(fake, *a)
    fake.get_gamma_weights = GRPOTrainer.get_gamma_weights  # a static method
    fake.get_off_policy_mask = GRPOTrainer.get_off_policy_mask
    inputs = {
        "prompt_ids": torch.zeros(logp.shape[0], 1, dtype=torch.long),
        "prompt_mask": torch.ones(logp.shape[0], 1, dtype=torch.long),
        "completion_ids": torch.zeros_like(mask),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum().float(),
    }
    if is_ratio is not None:
        inputs.update(importance_sampling_ratio=is_ratio, sampling_per_token_logps=old)
    if sampling is not None:
        inputs["sampling_per_token_logps"] = sampling
    fake.args.steps_per_generation = 1
    loss = GRPOTrainer._compute_loss(fake, None, inputs)
    if state is not None:
        state.update({k: getattr(fake, k) for k in state})
    return loss


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_matches_trl_compute_loss(loss_type, level, beta):
    pytest.importorskip("trl")
    gen = torch.Generator().manual_seed(hash((loss_type, level, beta)) % 2**31)
    b, t = 6, 5
    old = -torch.rand(b, t, generator=gen) * 3
    logp = old + torch.randn(b, t, generator=gen) * 0.3
    ref = old + torch.randn(b, t, generator=gen) * 0.2
    adv = torch.randn(b, generator=gen)
    lengths = torch.tensor([5, 3, 1, 4, 2, 5])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    theirs = _trl_loss(logp, old, ref, adv, mask, loss_type, level, beta, 0.2, 0.28, t)
    ours = algorithm.policy_loss(
        logp,
        old,
        adv,
        mask,
        loss_type=loss_type,
        epsilon=0.2,
        epsilon_high=0.28,
        importance_sampling_level=level,
        beta=beta,
        ref_logp=ref,
        max_completion_length=t,
    ).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)


LENGTHS = [5, 3, 1, 4, 2, 5]  # the real tokens of each row of a random batch


def random_batch(seed: int, t: int = 5, lengths: list[int] = LENGTHS):
    """(old log-probs, new ones near them, advantages, mask): a batch for the loss cross-checks."""
    gen = torch.Generator().manual_seed(seed)
    b = len(lengths)
    old = -torch.rand(b, t, generator=gen) * 3
    logp = old + torch.randn(b, t, generator=gen) * 0.3
    adv = torch.randn(b, generator=gen)
    mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).long()
    return old, logp, adv, mask, gen


@pytest.mark.parametrize("quantile", [0.0, 0.2, 0.7])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_top_entropy_quantile_matches_trl(quantile, loss_type):
    """Only the high-entropy tokens keep their policy term; the KL term and the normaliser keep all."""
    pytest.importorskip("trl")
    old, logp, adv, mask, gen = random_batch(11)
    t = mask.shape[1]
    ref = old + torch.randn(old.shape, generator=gen) * 0.2
    entropy = torch.rand(old.shape, generator=gen) * 4
    keep = algorithm.high_entropy_mask(entropy, mask, quantile)
    assert keep.sum() == (1 if quantile == 0.0 else max(1, round(quantile * 20)))  # of 20 real tokens
    theirs = _trl_loss(
        logp, old, ref, adv, mask, loss_type, "token", 0.04, 0.2, 0.2, t, quantile=quantile, entropies=entropy
    )
    ours = algorithm.policy_loss(logp, old, adv, mask, loss_type=loss_type, beta=0.04, ref_logp=ref, token_mask=keep)
    assert ours.loss.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("threshold", [0.1, 0.2])
def test_off_policy_mask_matches_trl(threshold):
    """Negative-advantage sequences far from vLLM's sampling policy lose their policy term (TRL's
    off_policy_mask_threshold); one NaN behaviour log-prob is no evidence."""
    pytest.importorskip("trl")
    from trl.trainer.grpo_trainer import GRPOTrainer

    behaviour, _, adv, mask, gen = random_batch(5, lengths=LENGTHS + [5, 4])
    b, t = mask.shape
    logp = behaviour - torch.rand(b, t, generator=gen) * 0.4  # KL estimates 0 to 0.4 per token
    old = logp.detach() + torch.randn(b, t, generator=gen) * 0.1
    behaviour[3, 1] = float("nan")
    keep = algorithm.off_policy_mask(adv, logp, behaviour, mask, threshold)
    theirs = GRPOTrainer.get_off_policy_mask(adv.unsqueeze(1), logp, behaviour, mask, threshold)
    assert torch.equal(keep, theirs.bool()) and 0 < keep.sum() < b
    ours = algorithm.policy_loss(logp, old, adv, mask, loss_type="dapo", token_mask=keep).loss
    full = algorithm.policy_loss(logp, old, adv, mask, loss_type="dapo").loss
    fake_inputs = {"sampling_per_token_logps": behaviour}
    trl = _trl_loss(logp, old, None, adv, mask, "dapo", "token", 0.0, 0.2, 0.2, t, opsm=threshold, **fake_inputs)
    assert ours.item() == pytest.approx(trl.item(), rel=1e-5, abs=1e-6) and ours.item() != pytest.approx(full.item())


@pytest.mark.parametrize("mode", ["token_truncate", "sequence_mask"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_importance_weighted_loss_matches_trl(mode, loss_type):
    pytest.importorskip("trl")
    gen = torch.Generator().manual_seed(7)
    b, t = 6, 5
    old = -torch.rand(b, t, generator=gen) * 3
    logp = old + torch.randn(b, t, generator=gen) * 0.3
    behaviour = old + torch.randn(b, t, generator=gen) * 0.8
    adv = torch.randn(b, generator=gen)
    mask = (torch.arange(t)[None, :] < torch.tensor([5, 3, 1, 4, 2, 5])[:, None]).long()
    weights = algorithm.importance_weights(old, behaviour, mask, mode, clip_min=0.5, clip_max=2.0)
    theirs = _trl_loss(logp, old, None, adv, mask, loss_type, "token", 0.0, 0.2, 0.2, t, is_ratio=weights)
    ours = algorithm.policy_loss(logp, old, adv, mask, loss_type=loss_type, is_weights=weights).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)


def test_importance_weights_by_hand():
    learner = torch.tensor([[0.0, -1.0, -2.0]])
    behaviour = torch.tensor([[-2.0, -1.0, 0.0]])  # token ratios e^2, 1, e^-2
    mask = torch.tensor([[1, 1, 0]])  # the last token is padding: ratio 1
    token = algorithm.importance_weights(learner, behaviour, mask, "token_truncate", clip_max=3.0)
    assert token[0].tolist() == pytest.approx([3.0, 1.0, 1.0])
    masked = algorithm.importance_weights(learner, behaviour, mask, "token_mask", clip_min=0.5, clip_max=3.0)
    assert masked[0].tolist() == pytest.approx([0.0, 1.0, 1.0])
    seq = algorithm.importance_weights(learner, behaviour, mask, "sequence_truncate", clip_max=None)
    assert seq.shape == (1, 1) and seq.item() == pytest.approx(math.exp(2.0))
    assert algorithm.importance_weights(learner, behaviour, mask, "sequence_mask", clip_max=3.0).item() == 0.0
    with pytest.raises(ValueError, match="vllm_importance_sampling_mode='x'"):
        algorithm.importance_weights(learner, behaviour, mask, "x")


SHAPE = algorithm.LossShape(
    delta=1.5,
    sapo_temperature_pos=0.9,
    sapo_temperature_neg=1.2,
    vespo_k_pos=2.5,
    vespo_lambda_pos=3.5,
    vespo_k_neg=3.2,
    vespo_lambda_neg=1.8,
    use_bias_correction_kl=True,
)


def _random_case(seed):
    gen = torch.Generator().manual_seed(seed)
    b, t = 6, 5
    old = -torch.rand(b, t, generator=gen) * 3
    logp = (old + torch.randn(b, t, generator=gen) * 0.3).requires_grad_()
    ref = old + torch.randn(b, t, generator=gen) * 0.2
    behaviour = old + torch.randn(b, t, generator=gen) * 0.5
    adv = torch.randn(b, generator=gen)
    mask = (torch.arange(t)[None, :] < torch.tensor([5, 3, 1, 4, 2, 5])[:, None]).long()
    return logp, old, ref, behaviour, adv, mask


@pytest.mark.parametrize("loss_type", ["cispo", "sapo", "luspo", "vespo", "grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("corrected", [False, True])
def test_loss_types_and_their_parameters_match_trl(loss_type, level, beta, corrected):
    """CISPO, SAPO, LUSPO, VESPO (and delta, SAPO's temperatures, VESPO's k and lambda, the KL's bias
    correction, the vLLM importance weights) against TRL's own `_compute_loss`: values and gradients."""
    pytest.importorskip("trl")
    logp, old, ref, behaviour, adv, mask = _random_case(hash((loss_type, level, beta, corrected)) % 2**31)
    weights = algorithm.importance_weights(old, behaviour, mask, "token_truncate", clip_max=2.0) if corrected else None
    eps_high = 5.0 if loss_type == "cispo" else 0.28  # CISPO's epsilon_high is the cap itself
    extra = {
        name: getattr(SHAPE, name)
        for name in (
            "delta",
            "sapo_temperature_pos",
            "sapo_temperature_neg",
            "vespo_k_pos",
            "vespo_lambda_pos",
            "vespo_k_neg",
            "vespo_lambda_neg",
            "use_bias_correction_kl",
        )
    }
    theirs = _trl_loss(logp, old, ref, adv, mask, loss_type, level, beta, 0.2, eps_high, 5, is_ratio=weights, **extra)
    (their_grad,) = torch.autograd.grad(theirs, logp)
    ours = algorithm.policy_loss(
        logp,
        old,
        adv,
        mask,
        loss_type=loss_type,
        epsilon=0.2,
        epsilon_high=eps_high,
        importance_sampling_level=level,
        beta=beta,
        ref_logp=ref,
        max_completion_length=5,
        is_weights=weights,
        shape=SHAPE,
    ).loss
    (our_grad,) = torch.autograd.grad(ours, logp)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(our_grad, their_grad, rtol=1e-5, atol=1e-7)


def test_delta_caps_the_unclipped_side_by_hand():
    # negative advantage, ratio e^0.5 = 1.6487: min(-1.6487, -1.2) = -1.6487 unclipped; delta 1.5 caps it
    logp, old = torch.tensor([[0.5]]), torch.zeros(1, 1)
    shape = algorithm.LossShape(delta=1.5)
    out = algorithm.policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 1), loss_type="grpo", shape=shape)
    assert out.loss.item() == pytest.approx(1.5, abs=1e-6)


def test_normalize_then_sum_matches_trl():
    """TRL's multi_objective_aggregation="normalize_then_sum", with a missing value, by its own code's steps."""
    per_fn = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, float("nan")], [0.5, 0.5], [0.0, 0.0], [1.0, 1.0]])
    weights = torch.tensor([1.0, 2.0])
    out = algorithm.normalized_then_summed(per_fn, weights, num_generations=3)
    grouped = per_fn.view(-1, 3, 2)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    var = torch.nanmean((grouped - mean) ** 2, dim=1, keepdim=True)
    count = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    std = (var * count / (count - 1)).sqrt()
    summed = (((grouped - mean) / (std + 1e-4)).view(-1, 2) * weights).nansum(dim=1)
    batch_std = torch.sqrt(torch.mean((summed - summed.mean()) ** 2) * 6 / 5)
    expected = (summed - summed.mean()) / (batch_std + 1e-4)
    assert torch.allclose(out.advantages, expected, atol=1e-5)
    assert torch.allclose(out.rewards, torch.tensor([1.0, 2.0, 1.0, 1.5, 0.0, 3.0]))
