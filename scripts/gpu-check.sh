#!/usr/bin/env bash
# The CUDA/NCCL checks, in minutes, on whatever GPUs are present: the gpu-marked tests and a short
# fp16 bench (2 stages when there are 2+ GPUs). Uses the machine's own torch (a CUDA build):
#   pip install -e . && scripts/gpu-check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
PY=${PYTHON:-python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count(), 'GPU(s)')" | tee "$out/device.txt"
"$PY" -m pytest -q -m gpu tests/gpu 2>&1 | tee "$out/tests.txt"
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
configs="1x1 1x2"; [ "$gpus" -ge 2 ] && configs="1x1 2x1 2x2"
"$PY" -m asyncvid bench --model animatediff --preset small --size 64 --frames 16 --steps 12 \
  --configs $configs --no-memory --dtype float16 --json "$out/bench-fp16.json" --markdown "$out/bench-fp16.md" 2>&1 | tail -20 | tee "$out/bench.txt"
