#!/usr/bin/env bash
# One command for a GPU machine: CLIP embedding, faiss-gpu search, a GroupViT-S bf16 step and evaluation on cuda,
# printed as one table (under 8 minutes on one H100/H200). Without a GPU it runs the CPU-safe parts and says so.
#   bash benchmarks/gpu_check.sh [--images N] [--workers N]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: no GPU driver found"
exec timeout 780 "$PY" benchmarks/gpu_check.py "$@"
