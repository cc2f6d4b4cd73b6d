#!/usr/bin/env bash
# Starts a Ray head node on this machine for `ray job submit`, reachable from loopback only, with
# token authentication. Other machines join only if you bind it elsewhere yourself (--node-ip-address).
#   bash cluster/start-local-head.sh [--num-gpus N]
set -euo pipefail
export RAY_AUTH_MODE=token
ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --include-dashboard=true \
  --disable-usage-stats "$@"
echo "submit with: RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m rlactors train examples/arithmetic_grpo.yaml"
