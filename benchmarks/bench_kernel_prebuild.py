"""A fresh machine's first start: vLLM's LoRA kernels built in parallel processes
(`rlactors.engine.worker_env.KernelPrebuild`) against vLLM building them one after another as it
starts and in the first generations. (CUDA only.)

    python benchmarks/bench_kernel_prebuild.py --model /tmp/smollm2 [--modes none,prebuild_first,prebuild]

Each mode runs in its own process with its own empty Triton cache (as on a fresh machine):
- `none`: vLLM imported, the engine started as a rollout worker starts it (graphs up to 64
  sequences), then two LoRA generations of the example's size (8 prompts x 8 x 32 tokens);
- `prebuild_first`: as a rollout worker starts on a fresh machine: `--processes` child processes
  build the kernels (vLLM's shrink and expand ops on zero tensors of the model's LoRA shapes) while
  vLLM is imported, and are waited for before the engine starts;
- `prebuild`: the same children, waited for only after the engine has started (more overlap, but
  they hold GPU memory while vLLM measures what is free).
Printed per mode: the import, the engine's start, the first and second generation, and the LoRA
kernel builds: all of them, and those the generations still built (`built_by_generations`; with a
prebuild, 0 and as few builds in all as `none` mean the children built what vLLM needs, and only that).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def one_mode(args: argparse.Namespace) -> dict:
    from bench_bare import save_adapter
    from common import prompts

    from rlactors.engine.spec import EngineSpec
    from rlactors.engine.vllm_engine import create_engine, folder_request, import_vllm, sample
    from rlactors.engine.worker_env import KernelPrebuild, lora_kernel_files

    cache = os.environ["TRITON_CACHE_DIR"]
    start = time.perf_counter()
    prebuild = None
    if args.mode != "none":  # rlactors' rollout worker does this (`prebuild_first`) on a first start
        prebuild = KernelPrebuild.start(args.model, args.max_lora_rank, processes=args.processes)
    import_vllm()
    out: dict = {"mode": args.mode, "import_s": round(time.perf_counter() - start, 1)}
    if prebuild is not None and args.mode == "prebuild_first":
        wait_for(prebuild, out, start)
    llm = create_engine(EngineSpec(args.model, 512, 0.3, args.max_lora_rank, max_batch=64), kv_cache_memory_bytes=2**30)
    out["engine_s"] = round(time.perf_counter() - start, 1)
    if prebuild is not None and args.mode == "prebuild":
        wait_for(prebuild, out, start)
    ready = set(lora_kernel_files(cache))
    out["builds_before_generation"] = len(ready)
    request = folder_request("bench", 1, save_adapter(args.model, tempfile.mkdtemp(), args.max_lora_rank))
    tokenizer = llm.get_tokenizer()
    ids = [tokenizer(p).input_ids for p in prompts(8)]
    for name in ("first_generation_s", "second_generation_s"):
        t = time.perf_counter()
        sample(llm, ids, n=8, max_tokens=32, temperature=1.0, top_p=1.0, lora_request=request)
        out[name] = round(time.perf_counter() - t, 2)
    out["to_second_generation_s"] = round(time.perf_counter() - start, 1)
    final = set(lora_kernel_files(cache))
    out["builds"] = len(final)
    out["built_by_generations"] = len(final - ready)
    return out


def wait_for(prebuild, out: dict, start: float) -> None:
    """Waits for the prebuild's processes; records when they were done and how many finished cleanly."""
    out["prebuild_clean"] = f"{prebuild.wait()}/{len(prebuild.children)}"
    out["prebuild_done_s"] = round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/smollm2")
    parser.add_argument("--modes", default="none,prebuild_first,none,prebuild_first")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # one mode, in this process
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--max-lora-rank", type=int, default=64)
    args = parser.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(one_mode(args)), flush=True)
        return
    import torch

    if not torch.cuda.is_available():
        parser.error("needs CUDA: Triton builds vLLM's LoRA kernels only on a GPU")
    rows = []
    for mode in args.modes.split(","):
        env = {**os.environ, "TRITON_CACHE_DIR": tempfile.mkdtemp(prefix=f"triton-{mode}-")}
        command = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        rows.append(
            json.loads(lines[-1][7:]) if lines else {"mode": mode, "rc": done.returncode, "tail": done.stderr[-1500:]}
        )
        print(json.dumps(rows[-1]), flush=True)
    from common import gpu_name, save_piece, versions

    save_piece("kernel_prebuild", {"device": gpu_name(), "versions": versions(), "runs": rows})


if __name__ == "__main__":
    main()
