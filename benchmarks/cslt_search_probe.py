"""Isolated probe (own process: a failure may break the CUDA context): does cuSPARSELt's algorithm
search work for DTYPE with transpose_result TRANSPOSE? Prints one JSON line.

    python benchmarks/cslt_search_probe.py float16 1
"""

from __future__ import annotations

import json
import sys

import torch

dtype = getattr(torch, sys.argv[1])
transpose = sys.argv[2] == "1"
out: dict[str, object] = {"dtype": sys.argv[1], "transpose_result": transpose}
try:
    torch.manual_seed(0)
    w = torch.randn(4096, 4096, device="cuda", dtype=dtype)
    w = w * (torch.arange(4096, device="cuda") % 4 < 2)  # 2:4 along K
    x = torch.randn(1024, 4096, device="cuda", dtype=dtype)
    packed = torch._cslt_compress(w)
    alg = torch._cslt_sparse_mm_search(packed, x.t(), transpose_result=transpose)
    y = torch._cslt_sparse_mm(packed, x.t(), transpose_result=transpose, alg_id=int(alg))
    ref = (x @ w.t()) if transpose else (w @ x.t())
    torch.cuda.synchronize()
    out.update(alg=int(alg), max_abs_err=float((y.float() - ref.float()).abs().max()), ok=True)
except Exception as e:
    out.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
print(json.dumps(out), flush=True)
