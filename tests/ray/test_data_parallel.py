"""Two learner actors (gloo) on halves of a batch train the same adapter as one learner on all of it."""

import dataclasses

import pytest
import torch

from rlactors.core.config import GRPOConfig
from rlactors.core.records import RolloutBatch
from rlactors.distributed.groups import LearnerGroup
from rlactors.distributed.placement import Share
from rlactors.workers.learner import LearnerWorker

pytestmark = pytest.mark.ray


def _config(model, tmp_path, **kw):
    values = dict(
        model_name=model,
        max_seq_length=128,
        max_prompt_length=32,
        max_completion_length=16,
        max_lora_rank=16,
        lora_r=8,
        num_generations=2,
        prompts_per_step=4,
        learning_rate=1e-2,
        gradient_checkpointing=False,
        output_dir=str(tmp_path),
        micro_batch_size=2,
        max_logprob_mismatch=100.0,
    )
    values.update(kw)
    return GRPOConfig(**values)


def _batch(learner, version, seed):
    """8 samples (4 prompts x 2) of uneven lengths; behaviour log-probs from `learner`, slightly off."""
    gen = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(10, 1000, (8, 5), generator=gen)
    prompt_mask = torch.ones(8, 5, dtype=torch.long)
    prompt_mask[3, :2] = 0
    completion_ids = torch.randint(10, 1000, (8, 7), generator=gen)
    completion_mask = torch.ones(8, 7, dtype=torch.long)
    completion_mask[1, 4:] = 0
    completion_mask[6, 2:] = 0
    batch = RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        behaviour_logprobs=torch.zeros(8, 7),
        prompt_index=torch.arange(4).repeat_interleave(2),
        sample_index=torch.tensor([0, 1] * 4),
        truncated=torch.zeros(8, dtype=torch.bool),
        completions=["a"] * 8,
        adapter_version=version,
        num_generations=2,
        advantages=torch.randn(8, generator=gen),
    )
    with torch.no_grad():
        _, raw = learner._forward_logprobs(batch)
    noise = 0.05 * torch.randn(raw.shape, generator=gen)
    batch.behaviour_logprobs = ((raw + noise) * completion_mask).float()
    return batch


def _statistics(extra):
    """A step's extra metrics without its timings (which differ from run to run)."""
    return {k: v for k, v in extra.items() if not k.startswith("time/")}


def _reordered(batch, order):
    index = torch.tensor(order)
    tensors = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "behaviour_logprobs")
    tensors += ("prompt_index", "sample_index", "truncated", "advantages")
    fields = {name: getattr(batch, name)[index] for name in tensors}
    return dataclasses.replace(batch, completions=[batch.completions[i] for i in order], **fields)


@pytest.mark.parametrize(
    "options",
    [
        {"loss_type": "dapo", "num_iterations": 2, "beta": 0.04},
        {"loss_type": "bnpo", "vllm_importance_sampling_mode": "sequence_truncate"},
        {"loss_type": "grpo", "num_mini_batches": 2},
        # TRL's quantile is over every process's micro-batch: learner micro-batch i joined with the
        # other's micro-batch i, which the one learner holds together as its micro-batch i
        {"loss_type": "dapo", "top_entropy_quantile": 0.5, "single_micro_batch_size": 4},
    ],
    ids=["dapo-iterations-kl", "bnpo-sequence-is", "grpo-mini-batches", "dapo-entropy-quantile"],
)
def test_two_learners_on_halves_equal_one_learner_on_the_whole(ray_cluster, tiny_llama, tmp_path, options):
    import ray

    options = dict(options)
    single_micro = options.pop("single_micro_batch_size", None)
    config = _config(tiny_llama, tmp_path, **options)
    single = LearnerWorker(config.model_copy(update={"micro_batch_size": single_micro or config.micro_batch_size}))
    single.build()
    group = LearnerGroup(LearnerWorker, config, [Share(0, 0.5, 0.0), Share(0, 0.5, 0.0)], None)
    try:
        group.build()
        ahead = "learner/reference_passes_ahead"
        for step in (1, 2):
            batch = _batch(single, step - 1, seed=step)
            # Mini-batch j is slice j of each learner's shard: the one learner gets the rows in that order.
            # So is micro-batch i of each shard, joined, when the one learner's micro-batches are twice as large.
            order = [0, 1, 4, 5, 2, 3, 6, 7] if config.num_mini_batches == 2 or single_micro else list(range(8))
            one = single.update(_reordered(batch, order), step)
            if config.needs_logprob_passes:  # the group's learners run their passes ahead, each on its shard
                assert ray.get(group.prepare(batch, step)) == [True, True]
            two = group.update(batch, step)
            assert two.adapter_version == one.adapter_version == step
            for key in ("loss", "grad_norm", "kl", "logprob_mismatch", "clip_ratio_low", "clip_ratio_high"):
                assert getattr(two, key) == pytest.approx(getattr(one, key), rel=1e-4, abs=1e-7), key
            assert two.extra.pop(ahead, 1.0) == 1.0 and one.extra.pop(ahead, 0.0) == 0.0
            assert "time/learner_forward_backward_s" in two.extra and "time/learner_optimizer_s" in one.extra
            assert _statistics(two.extra) == pytest.approx(_statistics(one.extra), rel=1e-5)
        initial = LearnerWorker(config).export_adapter().tensors
        expected = single.export_adapter().tensors
        ranks = [ray.get(actor.export_adapter.remote()).tensors for actor in group.actors]
        for name in expected:
            assert torch.equal(ranks[0][name], ranks[1][name])  # the learners hold one adapter
        # The same update up to float summation order ((g0+g1)+(g2+g3) against ((g0+g1)+g2)+g3),
        # which Adam's g / sqrt(v) magnifies only where a gradient is near zero.
        moved = torch.cat([(expected[n] - initial[n]).flatten() for n in expected])
        error = torch.cat([(ranks[0][n] - expected[n]).flatten() for n in expected])
        assert moved.norm() > 0.1 and error.norm() / moved.norm() < 1e-3, float(error.norm() / moved.norm())
    finally:
        group.shutdown()


def test_learners_with_unequal_micro_batch_counts_join_every_gather(ray_cluster, tiny_llama, tmp_path):
    """7 rows over two learners in micro-batches of 3: one learner has 2 micro-batches, the other 1;
    the entropy quantile's gathers still pair up (the second learner makes up its missing one)."""
    import ray

    from rlactors.core.records import BatchTotals

    config = _config(tiny_llama, tmp_path, loss_type="dapo", top_entropy_quantile=0.5, micro_batch_size=3)
    probe = LearnerWorker(config)
    probe.build()
    group = LearnerGroup(LearnerWorker, config, [Share(0, 0.5, 0.0), Share(0, 0.5, 0.0)], None)
    try:
        group.build()
        batch = _batch(probe, 0, seed=1).rows(0, 7)
        shards = group._shards(batch)
        assert [-(-s.size // 3) for s in shards] == [2, 1]
        totals = BatchTotals.per_mini_batch(shards, 3, 1)
        refs = [a.update.remote(s, 1, totals) for a, s in zip(group.actors, shards)]
        metrics = ray.get(refs, timeout=120)  # a learner left waiting in a gather would time out here
        assert [m.adapter_version for m in metrics] == [1, 1] and metrics[0].loss == metrics[1].loss
    finally:
        group.shutdown()
