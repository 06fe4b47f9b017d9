#!/usr/bin/env bash
# The device run behind benchmarks/RESULTS.md's issue-13 section: every step of gpu_semi.py, then the
# GPU tests, each under its own time limit, everything written into OUT (at most 8 files).
# usage (from the repository root, on a machine with an NVIDIA GPU): bash benchmarks/gpu_semi_run.sh OUT
set -u
OUT=${1:?usage: gpu_semi_run.sh OUT}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,power.limit --format=csv > "$OUT/nvidia_smi.txt" 2>&1
{
  timeout 120 $PY benchmarks/gpu_semi.py --out "$OUT" --steps env,layers
  timeout 180 $PY benchmarks/gpu_semi.py --out "$OUT" --steps e2e --e2e-budget-s 110
  timeout 200 $PY benchmarks/gpu_semi.py --out "$OUT" --steps compile
  timeout 100 $PY -m pytest -q -m gpu -p no:cacheprovider tests/runtime/test_cuda_semi.py tests/accel/test_bench_cuda.py \
      tests/accel/test_sparse_forms.py tests/accel/test_backend.py tests/accel/test_checkpoint.py > "$OUT/pytest.txt" 2>&1
  echo "pytest exit $?"; tail -25 "$OUT/pytest.txt"
} 2>&1 | tee "$OUT/log.txt"
