"""Multi-turn episodes with a 50 ms tool against single-turn generation of as many sampled tokens,
and against the same episodes locked turn by turn, in one run (median of alternated rounds).

    python benchmarks/bench_agent_loop.py [--model models/smollm2] [--prompts 16] [--rounds 3]
        [--compilation-config '{}'] [--hold-steps 4,16]

Episodes: `--prompts` two-digit products x 8, SmolLM2 with the calculator example's prefill, an
async `multiply` tool that sleeps 50 ms, up to 3 tool rounds (4 turns). Then:
- independent: every episode advances on its own (rlactors' loop), each turn stopping at the end
  of its call (a stop string, so vLLM detokenizes as it samples);
- no_stop: the same without the stop string (turns end at EOS, as TRL's loop runs);
- locked: every episode waits for all others at each turn (a batch-synchronous loop);
- single: one request per episode sampling exactly as many tokens as that episode's model
  tokens (`ignore_eos`): single-turn generation of the same sampled tokens;
- single_stream: `single` added one request at a time to the stream the episodes use;
- single_mean: every request the mean length (no long tail).
- held_K: independent, but the turns that follow tool results are handed to vLLM together, held at
  most K engine steps (fewer steps that prefill beside decodes).
For the last round, each variant's engine steps are timed (`engine_timeline`): how many steps, the
seconds inside them and outside (tools, the loop), and the requests each step carried.
Target (issue 17): independent <= 1.25 x single + one tool latency per tool round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import gpu_name, save_piece, versions

TOOL_SECONDS = 0.05
PREFILL = '<tool_call>\n{"name": "multiply", "arguments": {"a": '


async def multiply(a: int, b: int) -> int:
    """Multiplies two integers.

    Args:
        a: the first integer
        b: the second integer
    """
    await asyncio.sleep(TOOL_SECONDS)
    return a * b


def rows(count: int) -> list[dict]:
    rng = random.Random(0)
    out = []
    for _ in range(count):
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        out.append(
            {"prompt": [{"role": "user", "content": f"What is {a}*{b}?"}, {"role": "assistant", "content": PREFILL}]}
        )
    return out


class Timeline:
    """A `TurnStream` whose engine steps are timed: how many ran, how long they took, how many
    requests each carried, and whether requests were added just before it (a step that prefills
    them beside the others' decodes). The rest of a variant's wall time is outside vLLM.

    `hold_steps` > 0 coalesces: requests added are held and handed to vLLM together once the
    oldest has waited that many steps, or at once when vLLM has nothing else to run."""

    def __init__(self, stream, hold_steps: int = 0) -> None:
        self.stream, self.hold_steps = stream, hold_steps
        self.steps: list[tuple[float, int, bool]] = []
        self.held: list[tuple[str, list[int], int]] = []
        self.held_since = 0
        self.added = False

    def add(self, key: str, token_ids: list[int], max_tokens: int) -> None:
        if not self.hold_steps:
            self.stream.add(key, token_ids, max_tokens)
            self.added = True
            return
        if not self.held:
            self.held_since = len(self.steps)
        self.held.append((key, token_ids, max_tokens))

    @property
    def busy(self) -> bool:
        return self.stream.busy or bool(self.held)

    def step(self) -> list:
        if self.held and (not self.stream.busy or len(self.steps) - self.held_since >= self.hold_steps):
            for request in self.held:
                self.stream.add(*request)
            self.held, self.added = [], True
        running, start = len(self.stream.pending), time.perf_counter()
        done = self.stream.step()
        self.steps.append((time.perf_counter() - start, running, self.added))
        self.added = False
        return done

    def summary(self, wall: float) -> dict:
        engine = sum(s for s, _, _ in self.steps)
        mixed = [s for s, _, added in self.steps if added]
        decode = [s for s, _, added in self.steps if not added]
        return {
            "engine_steps": len(self.steps),
            "engine_s": round(engine, 4),
            "outside_engine_s": round(wall - engine, 4),
            "step_ms_mean": round(1000 * engine / max(1, len(self.steps)), 3),
            "requests_per_step_mean": round(sum(n for _, n, _ in self.steps) / max(1, len(self.steps)), 1),
            "steps_under_16_requests": sum(n < 16 for _, n, _ in self.steps),
            "steps_after_adds": len(mixed),
            "step_after_adds_ms_mean": round(1000 * sum(mixed) / max(1, len(mixed)), 3),
            "step_without_adds_ms_mean": round(1000 * sum(decode) / max(1, len(decode)), 3),
        }


def main() -> None:
    import torch

    from rlactors.agent.chat_format import ChatFormat
    from rlactors.agent.episodes import AgentSpec, EpisodeLoop, LoopLimits, episode_counts, episode_means, start_episode
    from rlactors.agent.tools import ToolRunner
    from rlactors.engine import vllm_engine as engine
    from rlactors.loader.fast_language_model import load_engine

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/smollm2")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-completion-length", type=int, default=256)
    parser.add_argument(
        "--compilation-config",
        help="vLLM's compilation_config as JSON instead of rlactors' (full graphs up to the batch); '{}': vLLM's own",
    )
    parser.add_argument("--hold-steps", default="4,16", help="variants that coalesce the turns added (steps held)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    extra = {} if cuda else {"enforce_eager": True, "kv_cache_memory_bytes": 2**30}
    if args.compilation_config:
        extra["compilation_config"] = json.loads(args.compilation_config)
    # as a rollout worker of an agent run starts it: CUDA graphs up to the batch, full graphs for
    # mixed batches (`rlactors.engine.spec.device_defaults`); --compilation-config '{}' for vLLM's own
    batch = args.prompts * args.generations
    dtype = torch.bfloat16 if cuda else torch.float32
    llm = load_engine(args.model, 2048, dtype, 0.5, 16, max_batch=batch, mixed_batches=True, **extra)
    fmt = ChatFormat.of(llm.get_tokenizer())
    spec = AgentSpec(tools=[multiply])
    runner = ToolRunner(timeout_s=10)
    limits = LoopLimits(args.max_completion_length, 2048, 3, 64)
    data = rows(args.prompts)

    # the single-turn requests' prompts: each episode's prompt, rendered once for every round
    prompts = [start_episode("s", row, "prompt", spec, fmt).prompt_ids for row in data for _ in range(args.generations)]

    def episodes(name: str | None, locked: bool = False, stop: bool = True, hold_steps: int = 0) -> tuple[float, list]:
        """One variant's episodes; its engine steps kept in `timelines[name]` (none for the warm-up)."""
        runs = [
            start_episode(f"r{i}g{g}", row, "prompt", spec, fmt)
            for i, row in enumerate(data)
            for g in range(args.generations)
        ]
        turns = engine.TurnStream(llm, None, stop=fmt.call_end if stop else None, temperature=1.0, top_p=1.0)
        stream = Timeline(turns, hold_steps)
        start = time.perf_counter()
        EpisodeLoop(stream, fmt, runner, limits).run(runs, locked=locked)
        seconds = time.perf_counter() - start
        if name:
            timelines[name] = stream.summary(seconds)
        return seconds, runs

    def single_stream(lengths: list[int]) -> float:
        """`single` through the same timed stream: its engine steps beside the episodes'."""
        stream = Timeline(engine.TurnStream(llm, None, temperature=1.0, ignore_eos=True))
        start = time.perf_counter()
        for i, (prompt, n) in enumerate(zip(prompts, lengths)):
            stream.add(f"s{i}", prompt, n)
        while stream.busy:
            stream.step()
        seconds = time.perf_counter() - start
        timelines["single_stream"] = stream.summary(seconds)
        return seconds

    def single(lengths: list[int]) -> float:
        """One request per episode, each sampling exactly `lengths[i]` tokens."""
        params = [
            engine.sampling_params(n=1, max_tokens=n, min_tokens=n, ignore_eos=True, temperature=1.0, logprobs=0)
            for n in lengths
        ]
        start = time.perf_counter()
        engine.generate(llm, prompts, params)
        return time.perf_counter() - start

    timelines: dict[str, dict] = {}  # the last round's, per variant
    episodes(None)  # warm-up: CUDA graphs, caches
    holds = [int(h) for h in args.hold_steps.split(",") if h]
    looped = {
        "independent": {},
        "no_stop": {"stop": False},
        "locked": {"locked": True},
        **{f"held_{h}": {"hold_steps": h} for h in holds},
    }
    times: dict[str, list[float]] = {k: [] for k in [*looped, "single", "single_stream", "single_mean"]}
    counts = []
    for _ in range(args.rounds):
        for name, variant in looped.items():
            seconds, runs = episodes(name, **variant)
            times[name].append(seconds)
            if name == "independent":  # the single-turn variants sample these episodes' token counts
                counts.append(episode_counts(runs))
                lengths = [max(1, e.model_tokens) for e in runs]
        times["single"].append(single(lengths))
        times["single_stream"].append(single_stream(lengths))
        times["single_mean"].append(single([round(sum(lengths) / len(lengths))] * len(lengths)))
    med = {k: statistics.median(v) for k, v in times.items()}
    means = episode_means(counts[-1])
    n = counts[-1]["episodes"]
    model_tokens = counts[-1]["model_tokens"]
    rounds_max = 3  # max_tool_calling_iterations: the most tool latencies one episode can wait for
    target = 1.25 * med["single"] + rounds_max * TOOL_SECONDS
    result = {
        "device": gpu_name() if cuda else "cpu",
        "compilation_config": extra.get("compilation_config", "rlactors' defaults"),
        "versions": versions(),
        "episodes": int(n),
        "turns_mean": means["episodes/turns_mean"],
        "model_tokens_mean": means["episodes/model_tokens_mean"],
        "tool_calls_per_episode": means["tools/call_frequency"],
        "seconds": med,
        "episodes_per_s": {k: n / v for k, v in med.items()},
        "model_tokens_per_s": {k: model_tokens / v for k, v in med.items()},
        "independent_over_single": med["independent"] / med["single"],
        "locked_over_independent": med["locked"] / med["independent"],
        "target_s": target,
        "meets_target": med["independent"] <= target,
        "rounds": times,
        "engine_timeline": timelines,
    }
    print(f"{'':12} {'s':>8} {'episodes/s':>11} {'tokens/s':>10}")
    for k in times:
        print(f"{k:12} {med[k]:8.2f} {n / med[k]:11.1f} {model_tokens / med[k]:10.0f}")
    print(
        f"{'':14} {'engine steps':>12} {'in steps s':>10} {'outside s':>9} {'ms/step':>8} {'requests/step':>13} "
        f"{'steps after adds':>16} {'their ms':>8} {'others ms':>9}"
    )
    for k, t in timelines.items():
        print(
            f"{k:14} {t['engine_steps']:12} {t['engine_s']:10.3f} {t['outside_engine_s']:9.3f} "
            f"{t['step_ms_mean']:8.2f} {t['requests_per_step_mean']:13.1f} {t['steps_after_adds']:16} "
            f"{t['step_after_adds_ms_mean']:8.2f} {t['step_without_adds_ms_mean']:9.2f}"
        )
    verdict = "met" if result["meets_target"] else "NOT met"
    print(f"turns/episode {means['episodes/turns_mean']:.2f}, model tokens/episode {result['model_tokens_mean']:.1f}")
    print(
        f"independent / single = {result['independent_over_single']:.2f}x, locked / independent = "
        f"{result['locked_over_independent']:.2f}x; target {target:.2f} s: {verdict}"
    )
    save_piece("agent_loop", result)


if __name__ == "__main__":
    main()
