#!/usr/bin/env bash
# GPU check, from a repo checkout, with no network and no pip installs:
#   bench/gpu_check.sh BACKBONE_DIR [--cpu] [--data DIR] [--out FILE] [--epochs N]
# BACKBONE_DIR: a local backbone folder (`refit backbones export-fp16 DIR` makes a 44 MiB one).
# Uses the machine's own python3, torch, transformers, onnx and onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
backbone="${1:?usage: bench/gpu_check.sh BACKBONE_DIR [--cpu] [--data DIR] [--out FILE]}"
shift
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}."
export HF_HUB_OFFLINE=1 ORT_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
exec "$PY" bench/gpu_check.py --backbone "$backbone" "$@"
