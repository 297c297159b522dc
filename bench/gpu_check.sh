#!/usr/bin/env bash
# The one prepared GPU check (bench/gpu_check.py says what it measures; then bench/engines.py where vLLM is
# installed). At most 7 + 4 minutes on one NVIDIA GPU:
#   bench/gpu_check.sh                  # real sizes on the GPU
#   bench/gpu_check.sh --cpu --tiny     # the same code end to end on a CPU, before it ever meets a GPU
# Extra arguments go to bench/gpu_check.py (e.g. --json results.json). Nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
timeout 420 "$PYTHON" -u bench/gpu_check.py "$@"  # unbuffered: a timed-out run keeps what it printed
# vLLM vs Kelvin's sampler (issue 9), when this environment has vLLM (`pip install "kelvin[vllm]"` on a GPU).
if "$PYTHON" -c "import vllm" 2> /dev/null; then
    timeout 240 "$PYTHON" -u bench/engines.py --sizes 10m --threads "$(nproc)" --repeats 2
else
    echo "bench/engines.py skipped: vllm is not installed in $PYTHON's environment"
fi
