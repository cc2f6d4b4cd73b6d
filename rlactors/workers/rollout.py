"""`RolloutWorker`: samples GRPO groups with the loader's vLLM engine. A plain class: a group
makes it a Ray actor at spawn time, or runs it in the driver process.

Stateless but for the adapter: after a restart it holds version 0 and refuses to generate for
any other version until the current adapter is loaded again (`StaleAdapterError`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from rlactors.agent.episodes import AgentSpec, Episode
from rlactors.core.adapter import DeviceAdapter, LoRAAdapter, gpu_uuid, pick_for_gpu
from rlactors.core.records import RolloutBatch
from rlactors.core.timing import timed
from rlactors.engine import vllm_engine as engine
from rlactors.engine.samples import seed_sampling
from rlactors.engine.worker_env import KernelPrebuild, lora_kernel_builds
from rlactors.engine.worker_env import log_to_stderr as vllm_log_to_stderr
from rlactors.loader.fast_language_model import load_engine, resolve_dtype
from rlactors.loader.model_files import resolve_model_path
from rlactors.workers.host import WorkerProcess, use_all_cores, worker_log

if TYPE_CHECKING:
    from rlactors.core.config import GRPOConfig


FOLDER_LORA_IDS = 1 << 20  # vLLM ids of adapters loaded from folders start above this; in-memory ones are versions + 1


class StaleAdapterError(RuntimeError):
    """The worker does not hold the adapter version the caller asked for."""

    def __init__(self, held: int, wanted: int):
        super().__init__(f"rollout worker holds adapter version {held}, asked to generate with {wanted}")
        self.held, self.wanted = held, wanted

    def __reduce__(self) -> tuple:  # crosses process boundaries inside Ray's RayTaskError
        return StaleAdapterError, (self.held, self.wanted)


class EngineStartError(RuntimeError):
    """vLLM did not start in a rollout worker; the message quotes vLLM's reason."""


def start_kernel_prebuild(config: GRPOConfig, model_dir: Callable[[], str | None]) -> KernelPrebuild | None:
    """A machine's first start (CUDA, no LoRA kernels in Triton's cache): child processes that build
    vLLM's LoRA kernels while this process imports vLLM (`KernelPrebuild`). None otherwise, with the
    config's switch off, or without the model's local folder (`model_dir()`, asked only then, None)."""
    if not config.vllm_prebuild_lora_kernels or lora_kernel_builds() != 0:
        return None
    folder = model_dir()
    return KernelPrebuild.start(folder, config.max_lora_rank, config.deterministic_generation) if folder else None


class RolloutWorker(WorkerProcess):
    def __init__(
        self,
        config: GRPOConfig,
        rank: int = 0,
        engine: Any = None,
        agent: AgentSpec | None = None,
        prebuild: KernelPrebuild | None = None,
    ):
        """`engine`: a caller's vLLM engine (`model.vllm_engine`) to generate with, in this process;
        None: `build` starts one from `config`. `agent`: tools and environments; `generate` then
        takes dataset rows and runs multi-turn episodes (`rlactors.agent.episodes`). `prebuild`:
        children already building vLLM's LoRA kernels (in the driver, started with its import of
        vLLM); None: `build` starts them if this machine needs them."""
        self.config = config
        self.rank = rank
        self.agent = agent
        self._agent_parts_cache: tuple[Any, Any, Any] | None = None
        self.adapter_version = 0
        self._engine: Any = engine
        self._prebuild = prebuild
        self._request: Any = None  # LoRARequest of the loaded adapter; None = base model
        self._pad_id: int | None = None
        self._asleep = False
        self._folder_loads = 0
        self.startup: dict[str, float] = {}
        if worker_log(config.output_dir, "rollout", rank):
            vllm_log_to_stderr()  # vLLM's own lines in that log too (`engine` here is the argument)

    def build(self) -> int:
        """Starts the vLLM engine (unless given one); returns this process's pid (for fault injection and logs)."""
        if self._engine is None:
            prebuild = self._prebuild or start_kernel_prebuild(self.config, lambda: self._model_path)
            self._prebuild = None
            with timed(self.startup, "import vLLM"):
                engine.import_vllm()
            if prebuild is not None:
                with timed(self.startup, f"LoRA kernels ({len(prebuild.children)} processes)"):
                    prebuild.wait()
            cached = lora_kernel_builds()
            with timed(self.startup, "engine"):
                self._engine = self._start_engine()
            built = (lora_kernel_builds() or 0) - (cached or 0)
            if built > 0:  # a first start on this machine: the console's start-up line says why it was long
                kernels = f"{built} LoRA kernel{'s' if built > 1 else ''}"
                self.startup[f"engine (Triton built {kernels})"] = self.startup.pop("engine")
        if self._pad_id is None:
            tokenizer = self._engine.get_tokenizer()
            self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return os.getpid()

    def lora_kernel_builds(self) -> int | None:
        """Builds of vLLM's LoRA kernels in Triton's cache on this worker's machine, before the engine
        this worker will start; None where it starts none (a caller's engine, or no CUDA)."""
        return lora_kernel_builds() if self._engine is None else None

    @property
    def _sampling(self) -> dict[str, Any]:
        """The sampling fields of every request this worker makes (its engine warms up with them)."""
        cfg = self.config
        return {"temperature": cfg.temperature, "top_p": cfg.top_p, **cfg.sampling_extras()}

    @cached_property
    def _model_path(self) -> str:
        """The model's local folder, resolved (a hub id downloaded) once for the prebuild and the engine."""
        return resolve_model_path(self.config.model_name)

    def _start_engine(self) -> Any:
        use_all_cores()
        cfg = self.config
        path = self._model_path
        dtype = resolve_dtype(None if cfg.dtype == "auto" else cfg.dtype)
        try:
            return load_engine(
                path,
                cfg.max_seq_length,
                dtype,
                cfg.gpu_memory_utilization,
                cfg.max_lora_rank,
                load_in_4bit=cfg.load_in_4bit,
                seed=cfg.seed + self.rank,
                deterministic=cfg.deterministic_generation,
                sleep_mode=cfg.vllm_enable_sleep_mode,
                max_batch=-(-cfg.prompts_per_step * cfg.num_generations // max(1, cfg.num_rollout_workers)),
                mixed_batches=self.agent is not None,
                sampler_warmup=self._sampling if cfg.vllm_sampler_warmup == "run" else None,
                **cfg.engine_kwargs,
            )
        except (ValueError, RuntimeError) as err:
            raise EngineStartError(
                f"rollout worker {self.rank} could not start vLLM with gpu_memory_utilization="
                f"{cfg.gpu_memory_utilization}: {err}\nFix: lower gpu_memory_utilization (on CPU it is the "
                "share of RAM), set engine_kwargs.kv_cache_memory_bytes, or free memory on the node."
            ) from err

    def ready(self) -> None:
        """Builds the engine, or wakes it from `sleep`: every use of the engine starts here."""
        self.build()
        if self._asleep:
            engine.wake_up(self._engine)
            self._asleep = False

    def sleep(self) -> bool:
        """Frees this worker's GPU memory while a learner beside it trains (vLLM sleep level 1: the
        weights wait in host memory, the KV cache is dropped); the next use wakes the engine. False
        where vLLM has no sleep mode (CPU), `vllm_enable_sleep_mode` is off, or no engine is built yet
        (a restarted worker holds no GPU memory until its next use)."""
        if self._engine is None:
            return False
        self._asleep = self._asleep or engine.sleep(self._engine)
        return self._asleep

    def gpu(self) -> str | None:
        """This worker's GPU UUID; None on CPU."""
        return gpu_uuid()

    def load_adapter(self, adapter: LoRAAdapter | list[DeviceAdapter]) -> int:
        """Installs `adapter` from memory (no disk); returns the version now held. A list of
        `DeviceAdapter`s (one per learner) is opened on this worker's GPU and copied device to device."""
        self.ready()
        if isinstance(adapter, list):
            adapter = pick_for_gpu(adapter, gpu_uuid()).open()
        adapter.check(self.config.max_lora_rank)
        self._request = engine.load_adapter(self._engine, adapter, lora_id=adapter.version + 1)
        self.adapter_version = adapter.version
        return self.adapter_version

    def load_adapter_folder(self, path: str, version: int) -> int:
        """Loads a PEFT adapter folder the usual vLLM way (from disk), as policy `version`."""
        self.ready()
        # An id no in-memory version has had, and a new one each call: vLLM loads from disk only
        # the ids it does not hold (version + 1 would reuse the in-memory adapter of that version).
        self._folder_loads += 1
        lora_id = FOLDER_LORA_IDS + self._folder_loads
        self._request = engine.folder_request(f"rlactors-folder-v{version}-{lora_id}", lora_id, path)
        engine.reset_prefix_cache(self._engine)
        self.adapter_version = version
        return version

    def generate(
        self,
        prompts: list[list[int]] | list[dict[str, Any]],
        adapter_version: int,
        seed: int | None = None,
        n: int | None = None,
    ) -> RolloutBatch:
        """`n` (default `num_generations`) completions for each prompt (token ids; with tools,
        dataset rows), under `adapter_version` exactly; with a `seed`, sampling starts from it (the
        engine samples in this process)."""
        self.ready()
        if adapter_version != self.adapter_version:
            raise StaleAdapterError(self.adapter_version, adapter_version)
        if seed is not None:
            seed_sampling(seed)
        if self.agent is not None:
            return self.run_episodes(prompts, n)  # type: ignore[arg-type]
        return self._sample(prompts, n or self.config.num_generations)  # type: ignore[arg-type]

    def run_episodes(self, rows: list[dict[str, Any]], n: int | None = None) -> RolloutBatch:
        """`n` (default `num_generations`) multi-turn episodes per row, each advancing on its own."""
        from rlactors.agent.episodes import EpisodeLoop, episode_counts, start_episode

        cfg = self.config
        n = n or cfg.num_generations
        fmt, runner, limits = self._agent_parts()
        start = time.perf_counter()
        episodes = [
            start_episode(f"r{i}g{g}", row, cfg.prompt_column, self.agent, fmt)
            for i, row in enumerate(rows)
            for g in range(n)
        ]
        stream = engine.TurnStream(self._engine, self._request, stop=fmt.call_end, **self._sampling)
        EpisodeLoop(stream, fmt, runner, limits).run(episodes)
        seconds = time.perf_counter() - start
        batch = episodes_to_batch(episodes, n, self.adapter_version, self._pad_id)
        batch.vllm_seconds = seconds
        batch.episode_metrics = episode_counts(episodes)
        return batch

    def _agent_parts(self) -> tuple[Any, Any, Any]:
        """(chat format, tool runner, loop limits), made on first use and kept."""
        if self._agent_parts_cache is None:
            from rlactors.agent.chat_format import ChatFormat
            from rlactors.agent.episodes import LoopLimits
            from rlactors.agent.tools import ToolRunner

            cfg = self.config
            self._agent_parts_cache = (
                ChatFormat.of(self._engine.get_tokenizer(), self.agent.chat_template),
                ToolRunner(cfg.tool_timeout_s),
                LoopLimits(
                    cfg.max_completion_length,
                    cfg.max_seq_length,
                    cfg.max_tool_calling_iterations,
                    cfg.max_tool_response_tokens,
                ),
            )
        return self._agent_parts_cache

    def _sample(self, prompt_token_ids: list[list[int]], n: int) -> RolloutBatch:
        cfg = self.config
        start = time.perf_counter()
        samples = engine.sample(
            self._engine,
            prompt_token_ids,
            n=n,
            max_tokens=cfg.max_completion_length,
            lora_request=self._request,
            **self._sampling,
        )
        seconds = time.perf_counter() - start
        batch = samples_to_batch(samples, n, self.adapter_version, self._pad_id)
        batch.vllm_seconds = seconds
        return batch

    def prompt_logprobs(self, token_ids: list[int], num_scored: int) -> list[float]:
        """vLLM's log-probs of the last `num_scored` tokens under the held adapter (a probe)."""
        self.ready()
        return engine.prompt_logprobs(self._engine, token_ids, num_scored, self._request)


def samples_to_batch(samples: list, num_generations: int, adapter_version: int, pad_id: int) -> RolloutBatch:
    """Pads `engine.Sample`s (grouped by prompt) into a `RolloutBatch`."""
    import torch

    p = max(len(s.prompt_token_ids) for s in samples)
    c = max(1, max(len(s.completion_token_ids) for s in samples))
    b = len(samples)
    prompt_ids = torch.full((b, p), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((b, p), dtype=torch.long)
    completion_ids = torch.full((b, c), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((b, c), dtype=torch.long)
    logprobs = torch.zeros((b, c), dtype=torch.float32)
    for row, s in enumerate(samples):
        n_p, n_c = len(s.prompt_token_ids), len(s.completion_token_ids)
        prompt_ids[row, p - n_p :] = torch.tensor(s.prompt_token_ids)
        prompt_mask[row, p - n_p :] = 1
        if n_c:
            completion_ids[row, :n_c] = torch.tensor(s.completion_token_ids)
            completion_mask[row, :n_c] = 1
            logprobs[row, :n_c] = torch.tensor(s.logprobs)
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        behaviour_logprobs=logprobs,
        prompt_index=torch.tensor([s.prompt_index for s in samples]),
        sample_index=torch.arange(b) % num_generations,
        truncated=torch.tensor([s.finish_reason == "length" for s in samples]),
        completions=[s.text for s in samples],
        adapter_version=adapter_version,
        num_generations=num_generations,
    )


def episodes_to_batch(episodes: list[Episode], num_generations: int, adapter_version: int, pad_id: int) -> RolloutBatch:
    """Packs finished episodes (grouped by row) into a `RolloutBatch` with their env masks."""
    import torch

    samples = [
        engine.Sample(
            prompt_index=i // num_generations,
            prompt_token_ids=e.prompt_ids or [pad_id],
            completion_token_ids=e.completion_ids,
            logprobs=e.logprobs,
            text="",
            finish_reason="length" if e.finish_reason == "length" else "stop",
        )
        for i, e in enumerate(episodes)
    ]
    batch = samples_to_batch(samples, num_generations, adapter_version, pad_id)
    env_mask = torch.zeros_like(batch.completion_mask)
    for row, e in enumerate(episodes):
        env_mask[row, : len(e.env_mask)] = torch.tensor(e.env_mask, dtype=torch.long)
    batch.env_mask = env_mask
    batch.completions = [
        "\n".join(m["content"] for m in e.messages if m["role"] == "assistant" and m["content"]) for e in episodes
    ]
    batch.trajectories = [e.messages for e in episodes]
    batch.environments = [e.env for e in episodes]  # a failed one's is not scored (`batch.failures`)
    batch.failures = [e.failure for e in episodes]
    batch.check()
    return batch
