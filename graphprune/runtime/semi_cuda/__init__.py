"""The 2:4 GPU runtime: packed semi-structured Linear layers, per-shape algorithm choice, CUDA-graph
replay, and the loadable artifact.

- :mod:`.kernels`: the product (cuSPARSELt through ``torch._cslt_sparse_mm``; a reference kernel
  for tests);
- :mod:`.linear`: :class:`SemiSparseLinear`, the layer, with a route (sparse + algorithm id, or
  dense) per token count;
- :mod:`.algs`: :class:`AlgCache`, the per-(shape, dtype) algorithm choice cached as JSON;
- :mod:`.graphs`: :class:`CudaGraphRunner` (one graph per input signature) and the capturers;
- :mod:`.artifact`: :func:`save_semi_structured` / :func:`load_semi_structured`.

Why graphs (and not persistent cuSPARSELt plans) is written in DESIGN.md ("2:4 on Hopper"). Importing
this package imports torch only; nothing touches the GPU until a layer is built or a graph captured.
"""

from graphprune.runtime.semi_cuda.algs import AlgCache, AlgEntry, alg_key, environment
from graphprune.runtime.semi_cuda.artifact import SEMI_PLAN_FILE, load_semi_structured, save_semi_structured
from graphprune.runtime.semi_cuda.graphs import (
    CudaGraphCapturer,
    CudaGraphRunner,
    StandInCapturer,
    default_capturer,
    graphed,
    use_capturer,
)
from graphprune.runtime.semi_cuda.kernels import KERNELS, get_kernel
from graphprune.runtime.semi_cuda.linear import Route, SemiSparseLinear

__all__ = [
    "KERNELS",
    "SEMI_PLAN_FILE",
    "AlgCache",
    "AlgEntry",
    "CudaGraphCapturer",
    "CudaGraphRunner",
    "Route",
    "SemiSparseLinear",
    "StandInCapturer",
    "alg_key",
    "default_capturer",
    "environment",
    "get_kernel",
    "graphed",
    "load_semi_structured",
    "save_semi_structured",
    "use_capturer",
]
