#!/usr/bin/env bash
# The device run behind benchmarks/RESULTS.md's issue-13 section: the per-layer step (one process per
# dtype: a cuSPARSELt failure can break a process's CUDA context), the end-to-end variants, the
# torch.compile step, the GPU tests, then the fp16/bf16 algorithm-search probe; each under its own
# time limit; everything written into OUT (the device tool brings back at most 8 files).
# usage (repository root, a machine with an NVIDIA GPU): bash benchmarks/gpu_semi_run.sh OUT [E2E_VARIANTS] [STEPS]
set -u
OUT=${1:?usage: gpu_semi_run.sh OUT [E2E_VARIANTS] [STEPS]}
E2E=${2:-bf16-compiled,bf16-unfused,bf16-fused,fp16-unfused}
STEPS=${3:-layers,e2e,compile,tests,probe}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
has() { [[ ",$STEPS," == *",$1,"* ]]; }
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,power.limit --format=csv
  if has layers; then
    timeout 80 $PY benchmarks/gpu_semi.py --out "$OUT" --steps env,layers --dtypes bf16
    timeout 70 $PY benchmarks/gpu_semi.py --out "$OUT" --steps layers --dtypes fp16
  fi
  has e2e && timeout 200 $PY benchmarks/gpu_semi.py --out "$OUT" --steps e2e --e2e-variants "$E2E" --e2e-budget-s 130
  has compile && timeout 150 $PY benchmarks/gpu_semi.py --out "$OUT" --steps compile
  if has tests; then
    timeout 100 $PY -m pytest -q -m gpu -p no:cacheprovider tests/runtime/test_cuda_semi.py tests/bench/test_bench_cuda.py \
        tests/passes/test_convert_sparse_forms.py tests/backend/test_backend.py tests/checkpoint/test_compressed.py tests/test_cuda_target.py 2>&1 | tail -15
  fi
  if has probe; then
    for dt in float16 bfloat16; do for tr in 0 1; do timeout 25 $PY benchmarks/cslt_search_probe.py $dt $tr; done; done
  fi
} 2>&1 | tee "$OUT/log.txt"
