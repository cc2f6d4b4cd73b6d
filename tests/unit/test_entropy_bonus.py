"""TRL's entropy bonus (`entropy_coef`) and its adaptive control, against TRL's own `_compute_loss`."""

import math

import pytest
import torch
from test_algorithm import _trl_loss, random_batch

from rlactors.core import algorithm
from rlactors.core.config import GRPOConfig
from rlactors.workers.entropy_bonus import EntropyBonus

pytestmark = pytest.mark.unit

T = 5  # tokens a row
ADAPTIVE = dict(entropy_coef_min=0.0, entropy_coef_max=0.02, entropy_coef_delta=0.01, entropy_target=1.0)


def _inputs(seed):
    old, logp, adv, mask, gen = random_batch(seed, T)
    return logp, old, adv, torch.rand(old.shape, generator=gen) * 2, mask


def _ours(bonus, logp, old, adv, entropy, mask, loss_type, quantile):
    keep = algorithm.high_entropy_mask(entropy, mask, quantile) if quantile < 1.0 else None
    kept = mask if keep is None else mask * keep
    loss = algorithm.policy_loss(logp, old, adv, mask, loss_type=loss_type, token_mask=keep).loss
    return loss - bonus.loss_term(entropy, kept, num_micro=1), float((entropy * kept).sum() / kept.sum())


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
@pytest.mark.parametrize("quantile", [1.0, 0.5])
def test_static_bonus_matches_trl(loss_type, quantile):
    pytest.importorskip("trl")
    logp, old, adv, entropy, mask = _inputs(3)
    bonus = EntropyBonus(GRPOConfig(entropy_coef=0.05, top_entropy_quantile=quantile))
    ours, _ = _ours(bonus, logp, old, adv, entropy, mask, loss_type, quantile)
    state = {"entropy_coef": 0.05, "_entropy_bonus_enabled": True}
    theirs = _trl_loss(
        logp,
        old,
        None,
        adv,
        mask,
        loss_type,
        "token",
        0.0,
        0.2,
        0.2,
        T,
        quantile=quantile,
        entropies=entropy,
        state=state,
    )
    plain = algorithm.policy_loss(logp, old, adv, mask, loss_type=loss_type).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5) and ours.item() != pytest.approx(plain.item())


def test_adaptive_coefficient_follows_trl_step_by_step():
    """Entropy below the target raises the coefficient, which applies from the next step on; above it the
    coefficient falls and the bonus is off. The losses and coefficients match TRL's over five steps."""
    pytest.importorskip("trl")
    bonus = EntropyBonus(GRPOConfig(use_adaptive_entropy=True, entropy_coef=0.0, **ADAPTIVE))
    state = {
        "entropy_coef": 0.0,
        "use_adaptive_entropy": True,
        "_entropy_bonus_enabled": True,
        "_last_world_entropy": math.inf,
        "_entropy_window_stats": None,
    }
    coefs = []
    for step, scale in enumerate([0.5, 0.5, 0.5, 3.0, 0.5]):  # entropy means about 0.5 (under 1.0) or 3
        logp, old, adv, entropy, mask = _inputs(step)
        entropy = entropy * scale
        ours, kept_mean = _ours(bonus, logp, old, adv, entropy, mask, "dapo", 1.0)
        theirs = _trl_loss(
            logp, old, None, adv, mask, "dapo", "token", 0.0, 0.2, 0.2, T, entropies=entropy, state=state, **ADAPTIVE
        )
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-5), step
        bonus.step_done(kept_mean)
        assert bonus.coef == pytest.approx(state["entropy_coef"]) and bonus.last_entropy == pytest.approx(
            state["_last_world_entropy"]
        )
        coefs.append(round(bonus.coef, 4))
    assert coefs == [0.01, 0.02, 0.02, 0.01, 0.02]


def test_adaptive_bounds_must_be_ordered():
    from rlactors.core.config import ConfigError

    with pytest.raises(ConfigError, match="entropy_coef_min=0.5 is above entropy_coef_max=0.1"):
        GRPOConfig(use_adaptive_entropy=True, entropy_coef_min=0.5, entropy_coef_max=0.1)
