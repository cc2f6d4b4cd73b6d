"""GRPO and its variants as pure functions of tensors (torch only, no model, no Ray).

Shapes: B samples (prompts x num_generations, grouped contiguously: the G samples of prompt i are
rows i*G .. i*G+G-1), T completion tokens (right-padded, `mask` 1 on real tokens).
Formulas follow TRL's `GRPOTrainer` (`_compute_loss`, `_generate_and_score_completions`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
CLIPPED_SURROGATE = ("grpo", "dr_grpo", "dapo", "bnpo", "luspo")
SCALE_REWARDS = ("group", "batch", "none")
IS_LEVELS = ("token", "sequence")
STD_EPS = 1e-4  # TRL's epsilon in (r - mean) / (std + eps)
Gather = Callable[[torch.Tensor], torch.Tensor]  # joins a learner's 1-D values with the other learners'


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased std ignoring NaN (as TRL's `nanstd`); 0 where fewer than 2 values are finite."""
    valid = ~torch.isnan(x)
    count = valid.sum(dim) if dim is not None else valid.sum()
    mean = torch.nanmean(x, dim=dim, keepdim=dim is not None)
    sq = torch.where(valid, (x - mean) ** 2, torch.zeros_like(x))
    var = sq.sum(dim) / (count - 1).clamp(min=1)
    return torch.where(count > 1, var.sqrt(), torch.zeros_like(var))


@dataclass(frozen=True)
class Advantages:
    advantages: torch.Tensor  # [B], 0 for samples without a reward
    rewards: torch.Tensor  # [B], weighted sum over functions, NaN where every function gave None
    group_std: torch.Tensor  # [B], the std used to scale (or that would be, under scale_rewards="none")
    zero_std: torch.Tensor  # [B] bool, the sample's group has identical rewards


def combine_rewards(per_function: torch.Tensor, weights: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """[B, F] rewards (NaN = missing) and [F] weights -> [B]; NaN where every function is missing."""
    weights = torch.as_tensor(weights, dtype=per_function.dtype)
    total = (per_function * weights.unsqueeze(0)).nansum(dim=1)
    missing = torch.isnan(per_function).all(dim=1)
    return torch.where(missing, torch.full_like(total, float("nan")), total)


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group") -> Advantages:
    """Group-relative advantages: (r - mean of the prompt's group) / (std + 1e-4).

    rewards: [B] with NaN for missing samples, which are left out of their group's mean and std
    and get advantage 0. scale_rewards: "group" (std within the group), "batch" (std over all),
    "none" (no division: Dr. GRPO).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale_rewards!r}: use one of {SCALE_REWARDS}.")
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {num_generations}.")
    grouped = rewards.view(-1, num_generations)
    all_missing = torch.isnan(grouped).all(dim=1, keepdim=True)
    mean = torch.nanmean(torch.where(all_missing, torch.zeros_like(grouped), grouped), dim=1)
    mean = mean.repeat_interleave(num_generations)
    if scale_rewards == "batch":
        std = _nanstd(rewards).expand_as(rewards)
    else:
        std = _nanstd(grouped, dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + STD_EPS)
    advantages = torch.nan_to_num(advantages, nan=0.0)
    group_zero = torch.isclose(_nanstd(grouped, dim=1), torch.zeros(()))
    return Advantages(advantages, rewards, std, group_zero.repeat_interleave(num_generations))


def normalized_then_summed(per_function: torch.Tensor, weights: Sequence[float], num_generations: int) -> Advantages:
    """TRL's `multi_objective_aggregation="normalize_then_sum"`: each reward function's values are
    normalised within their group, the weighted sum is normalised over the batch.

    per_function: [B, F] with NaN for missing values. `Advantages.rewards` stays the plain weighted
    sum (`combine_rewards`), which is what the logs report as the reward.
    """
    b, f = per_function.shape
    grouped = per_function.view(-1, num_generations, f)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    std = _nanstd(grouped, dim=1).unsqueeze(1)
    normalised = ((grouped - mean) / (std + STD_EPS)).view(b, f)
    summed = combine_rewards(normalised, weights)
    batch_std = _nanstd(summed).expand_as(summed)
    advantages = torch.nan_to_num((summed - torch.nanmean(summed)) / (batch_std + STD_EPS), nan=0.0)
    zero = torch.isclose(batch_std, torch.zeros(()))
    return Advantages(advantages, combine_rewards(per_function, weights), batch_std, zero)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate k3 = exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # scalar, differentiable
    per_token_loss: torch.Tensor  # [B, T]
    ratio: torch.Tensor  # [B, T] or [B, 1]: the importance ratio before clipping
    clipped_low: torch.Tensor  # [B, T] bool: ratio < 1-eps where the advantage is negative
    clipped_high: torch.Tensor  # [B, T] bool: ratio > 1+eps_high where the advantage is positive
    kl: torch.Tensor | None  # [B, T]


@dataclass(frozen=True)
class LossShape:
    """The parameters of the loss types beyond PPO's clip (TRL's names)."""

    delta: float | None = None  # two-sided clipping: the ratio capped at delta (clipped-surrogate types)
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    use_bias_correction_kl: bool = False  # the KL term times the importance ratio


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str = "dapo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    importance_sampling_level: str = "token",
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    max_completion_length: int | None = None,
    num_items: float | None = None,
    is_weights: torch.Tensor | None = None,
    shape: LossShape | None = None,
    token_mask: torch.Tensor | None = None,
) -> LossOutput:
    """The policy loss of GRPO / Dr. GRPO / DAPO / BNPO / LUSPO (PPO's clipped surrogate), CISPO
    (clipped, detached importance weights on the log-prob), SAPO (a sigmoid gate instead of the clip)
    or VESPO (a gamma-shaped sequence weight on the log-prob), with an optional KL term.

    logp, old_logp, ref_logp, mask: [B, T]; advantages: [B]. `num_items` is the number of real
    completion tokens in the whole optimizer batch (DAPO's, CISPO's and VESPO's normaliser; defaults
    to this batch's) so that micro-batches accumulate to the full-batch loss. `max_completion_length`
    is Dr. GRPO's constant normaliser (defaults to T). `is_weights` ([B, T] or [B, 1], no gradient)
    multiply the per-token loss before the KL term (VESPO folds them into its weight instead): the
    correction for samples from another policy. `token_mask` ([B, T] or [B, 1] bool) keeps only those
    tokens' policy term, still counted in the normaliser (`high_entropy_mask`, `off_policy_mask`).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: use one of {LOSS_TYPES}.")
    if importance_sampling_level not in IS_LEVELS:
        raise ValueError(f"importance_sampling_level={importance_sampling_level!r}: use one of {IS_LEVELS}.")
    shape = shape or LossShape()
    mask = mask.to(logp.dtype)
    eps_high = epsilon if epsilon_high is None else epsilon_high
    token_log_ratio = logp - old_logp
    log_ratio = token_log_ratio
    if importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(1)
    if loss_type == "cispo":
        per_token = -torch.clamp(ratio, max=eps_high).detach() * adv * logp
    elif loss_type == "sapo":
        temperature = torch.where(adv > 0, shape.sapo_temperature_pos, shape.sapo_temperature_neg)
        per_token = -torch.sigmoid(temperature * (ratio - 1)) * 4 / temperature * adv
    elif loss_type == "vespo":
        per_token = -vespo_weights(adv, token_log_ratio, mask, is_weights, shape) * adv * logp
    else:
        clipped = torch.clamp(ratio, 1 - epsilon, 1 + eps_high)
        capped = ratio if shape.delta is None else torch.clamp(ratio, max=shape.delta)
        per_token = -torch.min(capped * adv, clipped * adv)
    if token_mask is not None:
        per_token = per_token * token_mask
    if is_weights is not None and loss_type != "vespo":
        per_token = per_token * is_weights
    kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs ref_logp (the log-probs with the adapter disabled).")
        kl = k3_kl(logp, ref_logp)
        if shape.use_bias_correction_kl:
            kl = kl * ratio
        per_token = per_token + beta * kl
    per_token = per_token.expand_as(logp)
    loss = _reduce(per_token, mask, loss_type, max_completion_length, num_items)
    ratio_full = ratio.expand_as(logp)
    return LossOutput(
        loss=loss,
        per_token_loss=per_token,
        ratio=ratio,
        clipped_low=(ratio_full < 1 - epsilon) & (adv < 0) & mask.bool(),
        clipped_high=(ratio_full > 1 + eps_high) & (adv > 0) & mask.bool(),
        kl=kl,
    )


def micro_batch_scale(loss_type: str, rows: int, batch_rows: int, num_micro: int) -> float:
    """A micro-batch's `policy_loss` factor, so that the micro-batches (of every learner) add up to the
    whole batch's loss: a mean over sequences by its rows, BNPO's token mean by the micro-batch count."""
    if loss_type in ("grpo", "sapo", "luspo", "dr_grpo"):  # Dr. GRPO's B is the micro-batch's
        return rows / batch_rows
    return 1.0 / num_micro if loss_type == "bnpo" else 1.0  # dapo, cispo, vespo: 1


def high_entropy_mask(
    entropy: torch.Tensor, mask: torch.Tensor, quantile: float, gather: Gather | None = None
) -> torch.Tensor:
    """The real tokens whose entropy is in the top `quantile` of the real tokens' (of every learner,
    by `gather`) ([B, T] bool): TRL's `get_high_entropy_mask` with threshold 1 - quantile."""
    real = mask.bool()
    values = entropy[real].float() if gather is None else gather(entropy[real].float())
    if values.numel() == 0:
        return torch.zeros_like(real)
    return (entropy >= torch.quantile(values, 1.0 - quantile)) & real


def off_policy_mask(
    advantages: torch.Tensor, logp: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor, threshold: float
) -> torch.Tensor:
    """[B, 1]: False for a sequence with a negative advantage whose mean per-token KL(behaviour ||
    current), estimated as behaviour - logp over its real tokens, exceeds `threshold` (TRL's
    `get_off_policy_mask`, DeepSeek-V3.2's off-policy sequence mask); tokens without a behaviour
    log-prob (NaN) count as no evidence."""
    mask = mask.to(logp.dtype)
    kl = torch.nan_to_num(behaviour - logp.detach(), nan=0.0)
    mean_kl = (kl * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
    return (advantages.unsqueeze(1) >= 0) | (mean_kl <= threshold)


def kept_tokens(
    advantages: torch.Tensor,
    logp: torch.Tensor,
    behaviour: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    off_policy_threshold: float | None,
    top_entropy_quantile: float,
    gather: Gather | None = None,
) -> torch.Tensor | None:
    """The tokens whose policy term counts (`policy_loss`'s `token_mask`): those `off_policy_mask` and
    `high_entropy_mask` keep, where each is asked for; None: all."""
    keep = None
    if off_policy_threshold is not None:
        keep = off_policy_mask(advantages, logp, behaviour, mask, off_policy_threshold)
    if top_entropy_quantile < 1.0:
        high = high_entropy_mask(entropy, mask, top_entropy_quantile, gather)
        keep = high if keep is None else keep & high
    return keep


LOG_1E_8 = math.log(1e-8)


@torch.no_grad()
def vespo_weights(
    adv: torch.Tensor,
    token_log_ratio: torch.Tensor,
    mask: torch.Tensor,
    is_weights: torch.Tensor | None,
    shape: LossShape,
) -> torch.Tensor:
    """VESPO's sequence weight phi(w) = e^lambda w^k e^(-lambda w) ([B, 1], no gradient; phi(1) = 1),
    w the sequence's importance ratio times the sampler correction; k, lambda by the advantage's sign."""
    log_w = torch.sum(torch.clamp(token_log_ratio, -20.0, 20.0) * mask, dim=-1, keepdim=True)
    if is_weights is not None:
        log_w = log_w + torch.sum(torch.clamp(torch.log(is_weights), LOG_1E_8, 20.0), dim=-1, keepdim=True)
    log_w = torch.clamp(log_w, LOG_1E_8, 20.0)
    positive = adv >= 0
    k = torch.where(positive, shape.vespo_k_pos, shape.vespo_k_neg)
    lam = torch.where(positive, shape.vespo_lambda_pos, shape.vespo_lambda_neg).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def importance_weights(
    learner_logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_truncate",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> torch.Tensor:
    """pi_learner / pi_behaviour per token ([B, T]) or per sequence ([B, 1]), truncated to
    [clip_min, clip_max] or zeroed outside it (TRL's `vllm_importance_sampling_*`)."""
    if mode not in IS_MODES:
        raise ValueError(f"vllm_importance_sampling_mode={mode!r}: use one of {IS_MODES}")
    diff = torch.nan_to_num((learner_logp - behaviour_logp) * mask, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return ratio if clip_min is None and clip_max is None else torch.clamp(ratio, min=clip_min, max=clip_max)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


def _reduce(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    max_completion_length: int | None,
    num_items: float | None,
) -> torch.Tensor:
    masked = per_token * mask
    if loss_type == "luspo":  # sum over each sequence's tokens, mean over sequences
        return masked.sum(-1).mean()
    if loss_type in ("grpo", "sapo"):  # mean over each sequence's tokens, then over sequences
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":  # mean over this batch's tokens
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":  # constant normaliser: B * max_completion_length
        return masked.sum() / (per_token.size(0) * (max_completion_length or per_token.size(1)))
    total = mask.sum() if num_items is None else torch.tensor(float(num_items))
    return masked.sum() / total.clamp(min=1.0)  # dapo, cispo, vespo: mean over the whole optimizer batch's tokens


def selective_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) at `token_ids`: [B, T, V], [B, T] -> [B, T] (float32).

    Computed in float32 a few rows at a time, keeping for the backward pass only the logits as
    given (bf16 on a GPU) and one log-sum-exp per token: a float32 copy of the whole [B, T, V]
    and its gradient never exist at once, which is the learner's largest transient.
    """
    return _SelectiveLogprobs.apply(logits, token_ids, float(temperature), False, False)[0]


def logprobs_and_entropy(
    logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0, entropy_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """`selective_logprobs` and, from the same float32 rows, each token's entropy (nats) of
    softmax(logits / temperature): TRL's `entropy` metric, without a second pass over the logits.
    With `entropy_grad` a loss may use the entropy too (TRL's `entropy_coef`); else it is a statistic."""
    return _SelectiveLogprobs.apply(logits, token_ids, float(temperature), True, entropy_grad)


LOGPROB_CHUNK_ELEMENTS = 2**25  # about 128 MB of float32 logits per chunk


class _SelectiveLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        token_ids: torch.Tensor,
        temperature: float,
        with_entropy: bool,
        entropy_grad: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty(token_ids.shape, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        entropy = torch.empty_like(out) if with_entropy else out.new_empty(0)
        for rows in _row_chunks(logits):
            x = logits[rows].float() / temperature
            lse[rows] = torch.logsumexp(x, dim=-1)
            out[rows] = torch.gather(x, -1, token_ids[rows].unsqueeze(-1)).squeeze(-1) - lse[rows]
            if with_entropy:  # H = lse(x) - sum softmax(x) * x
                entropy[rows] = lse[rows] - (x - lse[rows].unsqueeze(-1)).exp_().mul_(x).sum(-1)
        ctx.save_for_backward(logits, token_ids, lse, entropy if entropy_grad else out.new_empty(0))
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)  # a gradient left None is not computed
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, entropy_grad: torch.Tensor | None) -> tuple:
        logits, token_ids, lse, entropy = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for rows in _row_chunks(logits):
            x = logits[rows].float() / ctx.temperature
            lse_r = lse[rows].unsqueeze(-1)
            p = torch.exp(x - lse_r)
            g = grad[rows].float().unsqueeze(-1) if grad is not None else torch.zeros_like(lse_r)
            # d/dx (x_t - lse(x)) = onehot(t) - p;  dH/dx = -p (x - lse + H), through x = logits / temperature
            if entropy_grad is not None:
                h = entropy_grad[rows].unsqueeze(-1)
                chunk = p.mul_(x.sub_(lse_r - entropy[rows].unsqueeze(-1)).mul_(h).add_(g)).neg_()
            else:
                chunk = p.mul_(-g)
            if grad is not None:
                chunk.scatter_add_(-1, token_ids[rows].unsqueeze(-1), g)
            grad_logits[rows] = chunk.div_(ctx.temperature).to(logits.dtype)
        return grad_logits, None, None, None, None


def _row_chunks(logits: torch.Tensor) -> list[slice]:
    per_row = max(1, logits[0].numel())
    step = max(1, LOGPROB_CHUNK_ELEMENTS // per_row)
    return [slice(i, i + step) for i in range(0, logits.shape[0], step)]
