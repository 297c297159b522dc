#!/usr/bin/env bash
# The one prepared GPU check (bench/gpu_check.py says what it measures). Under 8 minutes on one NVIDIA GPU:
#   bench/gpu_check.sh                  # real sizes on the GPU
#   bench/gpu_check.sh --cpu --tiny     # the same code end to end on a CPU, before it ever meets a GPU
# Extra arguments go to bench/gpu_check.py (e.g. --json results.json). Nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
exec timeout 480 "$PYTHON" -u bench/gpu_check.py "$@"  # unbuffered: a timed-out run keeps what it printed
