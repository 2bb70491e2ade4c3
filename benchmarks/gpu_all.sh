#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md in one run, for a session lent a GPU machine
# (about 10 minutes on an H100/H200). Writes the JSON records to ${OUT:-gpu-results}/.
#   bash benchmarks/gpu_all.sh                 # PEAK_TFLOPS=790 (H100 bf16 dense) by default
# Needs torch with CUDA, numpy, scipy, scikit-image, tifffile; pytest for the CUDA tests and
# MONAI (pip install --no-deps monai) for the MONAI rows, else the naive loop is the baseline.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
run() {  # name, seconds, command...: one benchmark, its output kept even if it fails
  local name=$1 limit=$2; shift 2
  echo "== $name"; timeout "$limit" "$@" 2>&1 | tee "$out/$name.log" | grep -v '^{' | tail -40
}
run tests 120 "$py" -m pytest -q -p no:cacheprovider tests/test_inference.py -k cuda
run infer 240 "$py" benchmarks/infer_speed.py --peak-tflops "${PEAK_TFLOPS:-790}" \
  --json "$out/infer_gpu.json"
run train 120 "$py" benchmarks/train_speed.py --device cuda --json "$out/train_gpu.json"
run levels 60 "$py" benchmarks/levels_speed.py --device cuda --json "$out/levels_gpu.json"
run tiles 120 "$py" benchmarks/tile_size.py --device cuda --width 64 --stack 30 512 512 \
  --image 8192 --json "$out/tile_size_gpu.json"
