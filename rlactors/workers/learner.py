"""`LearnerWorker`: the PEFT training model, AdamW and the schedule; one GRPO update per batch.

A plain class: a group makes it a Ray actor at spawn time, or runs it in the driver process.
The adapter version counts applied updates; a batch must come from the current version.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from rlactors.core import algorithm
from rlactors.core.adapter import DeviceAdapter, LoRAAdapter, export_adapter, gpu_uuid
from rlactors.core.records import BatchTotals, MemoryNeed, RolloutBatch, StepMetrics, mini_batch_bounds
from rlactors.core.timing import timed
from rlactors.loader.fast_language_model import FastLanguageModel, keep_inputs_in_base_dtype
from rlactors.loader.fast_state import state_of
from rlactors.workers import collective, model_options, shared_prompt, step_stats
from rlactors.workers.entropy_bonus import EntropyBonus
from rlactors.workers.host import WorkerProcess, use_all_cores, worker_log
from rlactors.workers.learner_memory import measure_learner, warm_up
from rlactors.workers.learner_state import load_adapter_weights, load_learner_state, save_learner_state
from rlactors.workers.optim import make_optimizer, schedule

SHARED_VERSIONS = 3  # device buffers kept for rollout workers: the newest and two older (async, restarts)

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig


class StaleBatchError(ValueError):
    """A rollout batch from another policy version than the learner's (off-policy)."""


class LogprobMismatchError(RuntimeError):
    """Rollouts did not come from the policy being trained."""


class LearnerWorker(WorkerProcess):
    def __init__(self, config: GRPOConfig, rank: int = 0, model: Any = None):
        """`model`: a caller's PEFT model (from `FastLanguageModel`) to train in place, in this process;
        None: `build` loads one from `config`."""
        self.config = config
        self.rank = rank
        self.version = 0
        self.optimizer_steps = 0
        self.model: Any = model
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.device = "cpu"
        self.share_prompt = False  # each prompt computed once for its samples (`build` decides)
        self._shared: dict[int, tuple[DeviceAdapter, Any]] = {}  # version -> (record, its GPU buffer)
        self._prepared: tuple[tuple[int, int, int], tuple[list, list]] | None = None  # see prepare
        self.startup: dict[str, float] = {}
        self.entropy_bonus = EntropyBonus(config)
        worker_log(config.output_dir, "learner", rank)
        self.loss_shape = algorithm.LossShape(**{f.name: getattr(config, f.name) for f in fields(algorithm.LossShape)})

    def build(self) -> int:
        """Loads the base model with a fresh LoRA adapter (unless given one), AdamW and the lr schedule."""
        if self.optimizer is not None:
            return os.getpid()
        import torch

        use_all_cores()
        cfg = self.config
        if self.model is None:
            with timed(self.startup, "import transformers, PEFT"):  # what `model` would otherwise hide
                import peft  # noqa: F401
                from transformers import AutoModelForCausalLM  # noqa: F401
            if torch.cuda.is_available():
                with timed(self.startup, "CUDA"):
                    torch.zeros(1, device="cuda")
            with timed(self.startup, "model"):
                self.model = self._load_model()
        self.model.train()
        self.device = next(self.model.parameters()).device
        self.share_prompt = shared_prompt.shares_prompt(cfg.share_prompt_forward, self.model, self.device)
        if self._autocast_dtype() is not None:
            keep_inputs_in_base_dtype(self.model)
        model_options.apply(self.model, cfg)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(cfg, params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule(cfg))
        collective.broadcast_params(params)  # every data-parallel learner starts from rank 0's adapter
        if self.device.type == "cuda":
            with timed(self.startup, "warm-up"):
                warm_up(self)  # first-use kernels loaded while vLLM starts beside it, not in the first step
        return os.getpid()

    def _load_model(self) -> Any:
        import torch

        cfg = self.config
        torch.manual_seed(cfg.seed)
        model, _ = FastLanguageModel.from_pretrained(
            cfg.model_name,
            max_seq_length=cfg.max_seq_length,
            dtype=None if cfg.dtype == "auto" else cfg.dtype,
            load_in_4bit=cfg.load_in_4bit,
            fast_inference=False,
            max_lora_rank=cfg.max_lora_rank,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
        )
        return FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            random_state=cfg.seed,
        )

    def rendezvous_address(self) -> str:
        return collective.rendezvous_address()

    def join_group(self, address: str, world_size: int) -> str:
        """Joins the data-parallel group of `world_size` learners (before `build`)."""
        return collective.join(address, self.rank, world_size)

    def memory_need(self) -> MemoryNeed | None:
        """What a training micro-step at the configured sizes needs of this GPU; None without CUDA.
        For `gpu_memory_utilization: auto`."""
        self.build()
        return measure_learner(self)

    def export_adapter(self) -> LoRAAdapter:
        """The adapter at the current version, in the dtype the rollout engine computes in."""
        self.build()
        return export_adapter(self.model, self.version, dtype=state_of(self.model).dtype)

    def share_adapter(self) -> DeviceAdapter:
        """The adapter at the current version left on this GPU for rollout workers beside it (CUDA IPC)."""
        self.build()
        if self.version not in self._shared:
            self._shared[self.version] = DeviceAdapter.share(self.model, self.version, state_of(self.model).dtype)
            for old in sorted(self._shared)[:-SHARED_VERSIONS]:
                del self._shared[old]
        return self._shared[self.version][0]

    def gpu(self) -> str | None:
        """This learner's GPU UUID; None on CPU."""
        self.build()
        return gpu_uuid(self.device) if self.device.type == "cuda" else None

    def save_adapter(self, path: str) -> str:
        """Writes the current adapter as a PEFT folder."""
        return self.export_adapter().save(path)

    def load_adapter(self, adapter: LoRAAdapter) -> int:
        """Takes `adapter`'s weights (a caller's trained adapter the run goes on from); returns the version."""
        self.build()
        load_adapter_weights(self.model, adapter.tensors)
        return self.version

    def prepare(self, batch: RolloutBatch, step: int) -> bool:
        """The passes `update` needs before it trains on `batch` (old log-probs for `num_iterations` > 1, the
        base model's for `beta` > 0), run now under the current weights and kept for the same step's update:
        the driver calls this before the rewards are in, so they run while it scores. Whether there were any."""
        self.build()
        self._check_version(batch)
        passes = self._reference_passes([mb for mini in self._micro_batches(batch) for mb in mini])
        self._prepared = ((step, self.version, batch.size), passes)
        return any(p is not None for p in passes[0] + passes[1])

    def _micro_batches(self, batch: RolloutBatch) -> list[list[RolloutBatch]]:
        """The micro-batches of each of `num_mini_batches` slices of `batch`, padded to `pad_to_multiple_of`, on
        the device (before any kernel is queued: a copy from pageable memory waits for the GPU)."""
        size, multiple = self.config.micro_batch_size, self.config.pad_to_multiple_of
        minis = [batch.rows(a, b) for a, b in mini_batch_bounds(batch.size, self.config.num_mini_batches)]
        return [
            [m.rows(i, min(i + size, m.size), multiple).to(self.device) for i in range(0, m.size, size)] for m in minis
        ]

    def update(self, batch: RolloutBatch, step: int, totals: list[BatchTotals] | None = None) -> StepMetrics:
        """One GRPO update on `batch` (advantages set): `num_iterations` passes over it, each of
        `num_mini_batches` optimizer steps on consecutive slices of it.

        With several learners, `batch` is this learner's shard: `totals` are those of each whole
        mini-batch (slice j of every shard); losses are normalised by them, gradients and
        statistics summed over the learners."""
        import torch

        self.build()
        lag = self._check_version(batch)
        if batch.advantages is None:
            raise ValueError("RolloutBatch.advantages is None: score the batch before update")
        cfg = self.config
        totals = totals or BatchTotals.per_mini_batch([batch], cfg.micro_batch_size, cfg.num_mini_batches)
        minis = self._micro_batches(batch)
        micro = [mb for mini in minis for mb in mini]
        prepared, self._prepared = self._prepared, None
        ahead = prepared is not None and prepared[0] == (step, self.version, batch.size)
        old, ref = prepared[1] if ahead else self._reference_passes(micro)
        weights: list = [None] * len(micro)  # importance weights, fixed by the first iteration
        params = [p for p in self.model.parameters() if p.requires_grad]
        sums: dict[str, float] = {}
        skipped, grad_norm, mismatch = False, 0.0, 0.0
        firsts = list(itertools.accumulate((len(m) for m in minis[:-1]), initial=0))  # each one's first micro-batch
        extra: dict[str, Any] = {}  # the learner's own seconds (beside the driver's `time/update_s`), statistics
        for iteration, (j, mini) in itertools.product(range(cfg.num_iterations), enumerate(minis)):
            self.optimizer.zero_grad(set_to_none=True)
            stats = []
            gather = collective.MicroBatchGather(len(mini), self.device, cfg.top_entropy_quantile < 1.0)
            with timed(extra, "time/learner_forward_backward_s"):  # ends reading the statistics back
                for i, mb in enumerate(mini, start=firsts[j]):
                    loss, mb_stats, weights[i] = self._micro_loss(mb, old[i], ref[i], weights[i], totals[j], gather)
                    loss.backward()
                    stats.append(mb_stats)
                gather.finish()
                sums = step_stats.over_learners(*step_stats.summed(stats), self.device)
            if iteration == 0 and j == 0:  # before any optimizer step: vLLM's policy is the learner's
                mismatch = sums["mismatch"] / max(totals[0].num_items, 1.0)
                self._check_mismatch(mismatch)
            with timed(extra, "time/learner_optimizer_s"):
                collective.all_reduce_grads(params)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                skipped = not (math.isfinite(grad_norm) and math.isfinite(sums["loss"]))
                if skipped:
                    self.optimizer.zero_grad(set_to_none=True)
                    break
                self.optimizer.step()
                self.scheduler.step()
                self.entropy_bonus.step_done(sums["kept_entropy"] / max(sums["kept_tokens"], 1.0))
                if self.device.type == "cuda":
                    torch.cuda.synchronize()  # the step's kernels in its time (the adapter's sync waits on them anyway)
            self.optimizer_steps += 1
        if not skipped:
            self.version += 1
        if cfg.vllm_enable_sleep_mode and torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the update's cached blocks back before vLLM wakes beside us
        tokens = max(totals[j].num_items, 1.0)  # the statistics are the last optimizer step's
        if cfg.needs_logprob_passes:
            extra["learner/reference_passes_ahead"] = float(ahead)
        extra["entropy"] = sums["entropy"] / tokens  # TRL's: per token, at the sampling temperature
        if self.entropy_bonus.enabled:  # TRL's names, logged then
            extra |= {"entropy_coef": self.entropy_bonus.coef, "policy_loss": sums["policy_loss"]}
        if math.isfinite(sums["clip_low_min"]):  # some sequence had tokens
            extra |= {"clip_ratio/low_min": sums["clip_low_min"], "clip_ratio/high_max": sums["clip_high_max"]}
        if cfg.vllm_importance_sampling_correction and sums["is_count"]:
            extra |= {
                "sampling/importance_sampling_ratio/mean": sums["is_sum"] / sums["is_count"],
                "sampling/importance_sampling_ratio/min": sums["is_min"],
                "sampling/importance_sampling_ratio/max": sums["is_max"],
            }
        return StepMetrics(
            step=step,
            adapter_version=self.version,
            loss=sums["loss"],
            grad_norm=grad_norm,
            learning_rate=float(self.scheduler.get_last_lr()[0]),
            kl=sums["kl"] / tokens,
            clip_ratio_low=sums["clip_low"] / tokens,
            clip_ratio_high=sums["clip_high"] / tokens,
            logprob_mismatch=mismatch,
            skipped=skipped,
            optimizer_steps=self.optimizer_steps,
            staleness=lag,
            extra=extra,
        )

    def _check_version(self, batch: RolloutBatch) -> int:
        """The batch's staleness (learner version - generating version), or StaleBatchError."""
        lag = self.version - batch.adapter_version
        if not 0 <= lag <= self.config.max_staleness:
            raise StaleBatchError(
                f"rollout batch was generated by adapter version {batch.adapter_version}, the learner is at "
                f"version {self.version}: max_staleness={self.config.max_staleness} allows batches at most "
                f"{self.config.max_staleness} version(s) old and never newer"
            )
        return lag

    def _forward_logprobs(self, mb: RolloutBatch) -> tuple[Any, Any]:
        """(logp at the sampling temperature, logp at temperature 1), each [b, C] float32."""
        return self._forward(mb, with_entropy=False)[:2]

    def _forward(self, mb: RolloutBatch, with_entropy: bool) -> tuple[Any, Any, Any]:
        """`_forward_logprobs` and each token's entropy at the sampling temperature (None without
        `with_entropy`; with a gradient under the entropy bonus), from the same logits."""
        mb = mb.to(self.device)  # a no-op for the update's micro-batches, already there
        model_options.begin_pass(self.config)  # CUDA graphs of the compiled layers: a new pass
        with self.mixed_precision():
            logits = shared_prompt.completion_logits(self.model, mb, self.share_prompt)
        targets, temperature = mb.completion_ids, self.config.temperature
        if with_entropy:
            logp, entropy = algorithm.logprobs_and_entropy(logits, targets, temperature, self.entropy_bonus.enabled)
        else:
            logp, entropy = algorithm.selective_logprobs(logits, targets, temperature), None
        raw = logp if temperature == 1.0 else algorithm.selective_logprobs(logits.detach(), targets)
        return logp, raw.detach(), entropy

    def _reference_passes(self, micro: list[RolloutBatch]) -> tuple[list, list]:
        """Before any update: old log-probs (when num_iterations or num_mini_batches > 1; else the current
        ones, detached, are the same) and base-model log-probs with the adapter disabled (beta > 0)."""
        import torch

        cfg = self.config
        old: list = [None] * len(micro)
        ref: list = [None] * len(micro)
        if not cfg.needs_logprob_passes:
            return old, ref
        with torch.no_grad():
            for i, mb in enumerate(micro):
                if cfg.needs_old_logprobs:
                    old[i] = self._forward_logprobs(mb)  # (logp, logp at temperature 1)
                if cfg.beta > 0:
                    with self.model.disable_adapter():
                        ref[i] = self._forward_logprobs(mb)[0]
        return old, ref

    def _check_mismatch(self, mismatch: float) -> None:
        if mismatch > self.config.max_logprob_mismatch:
            self.optimizer.zero_grad(set_to_none=True)
            raise LogprobMismatchError(
                f"mean |logp_vllm - logp_learner| = {mismatch:.4f} exceeds max_logprob_mismatch="
                f"{self.config.max_logprob_mismatch}: rollouts did not come from the trained policy (stale or "
                "wrong adapter in vLLM, or a different base model / dtype)"
            )

    def _micro_loss(
        self, mb: RolloutBatch, old: Any, ref: Any, weights: Any, whole: BatchTotals, gather: Any
    ) -> tuple[Any, dict[str, Any], Any]:
        cfg = self.config
        logp, raw, entropy = self._forward(mb, with_entropy=True)  # mb is on the device (see update)
        old_logp, old_raw = old if old is not None else (logp.detach(), raw)  # the policy vLLM sampled from
        mask, behaviour = mb.loss_mask, mb.behaviour_logprobs  # tool results: no loss, no KL, not counted
        if cfg.vllm_importance_sampling_correction and weights is None:
            weights = algorithm.importance_weights(
                old_raw,
                behaviour,
                mask,
                cfg.vllm_importance_sampling_mode,
                cfg.vllm_importance_sampling_clip_min,
                cfg.vllm_importance_sampling_clip_max,
            )
        if cfg.mask_truncated_completions:
            mask = mask * (~mb.truncated).unsqueeze(1).long()
        # vLLM's log-probs are at temperature 1, as `raw`; the entropy quantile is over every learner's
        # micro-batch of this index (TRL's over its processes')
        threshold, quantile = cfg.off_policy_mask_threshold, cfg.top_entropy_quantile
        keep = algorithm.kept_tokens(mb.advantages, raw, behaviour, entropy, mask, threshold, quantile, gather)
        out = algorithm.policy_loss(
            logp,
            old_logp,
            mb.advantages,
            mask,
            loss_type=cfg.loss_type,
            epsilon=cfg.epsilon,
            epsilon_high=cfg.epsilon_high,
            importance_sampling_level=cfg.importance_sampling_level,
            beta=cfg.beta,
            ref_logp=ref,
            max_completion_length=cfg.max_completion_length,
            num_items=whole.num_items,
            is_weights=weights,
            shape=self.loss_shape,
            token_mask=keep,
        )
        loss = policy_loss = out.loss * algorithm.micro_batch_scale(cfg.loss_type, mb.size, whole.size, whole.num_micro)
        kept = mask if keep is None else mask * keep  # the tokens whose policy term counts
        if self.entropy_bonus.enabled:
            loss = loss - self.entropy_bonus.loss_term(entropy, kept, whole.num_micro)
        stats = step_stats.of_micro_batch(out, loss, policy_loss, raw, behaviour, mb.loss_mask, mask, kept, entropy)
        if weights is not None:
            stats |= step_stats.of_weights(weights, cfg.vllm_importance_sampling_mode.startswith("token"), mb.loss_mask)
        return loss, stats, weights

    def _autocast_dtype(self) -> Any:
        """bfloat16 when the base model computes in it, else None (fp32; fp16 keeps fp32 LoRA math,
        having no loss scaling)."""
        import torch

        state = state_of(self.model)
        return torch.bfloat16 if state is not None and state.dtype == torch.bfloat16 else None

    def mixed_precision(self) -> Any:
        """The model's forward in mixed precision: PEFT keeps the LoRA weights in float32 (so AdamW
        updates them in full precision), and autocast runs their matmuls in bf16 on bf16 inputs, as
        vLLM computes LoRA, instead of fp32 matmuls on inputs upcast per layer."""
        import torch

        dtype = self._autocast_dtype()
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def save_state(self, path: str) -> None:  # the files: see rlactors.trainer.checkpoints
        save_learner_state(path, self)

    def load_state(self, path: str) -> int:
        self.build()
        load_learner_state(path, self)
        self._shared.clear()  # shared buffers are keyed by version: never serve pre-load weights under one
        return self.version
