"""The 2:4 product kernels the semi-structured runtime calls, behind one small interface.

A :class:`SemiKernel` turns a 2:4 weight ``W`` ``[N, K]`` into its packed form once
(:meth:`~SemiKernel.compress`) and then computes ``x2 @ W.T + b`` for a 2-D input ``x2`` ``[M, K]``
(:meth:`~SemiKernel.mm`, result ``[M, N]``) with a chosen algorithm id and output layout.

- ``cusparselt`` (:class:`CusparseltKernel`): ``torch._cslt_compress`` / ``torch._cslt_sparse_mm``.
  ``M`` is padded up to the kernel's minimum (8 rows for fp16/bf16) and the padding sliced off.
  Two output layouts: ``transpose=False`` computes ``W @ x2.T`` (``[N, M]``) and returns its
  transposed *view* ``[M, N]`` (strides ``(1, M)``), exactly what ``F.linear`` on a
  ``to_sparse_semi_structured`` weight returns; ``transpose=True`` asks cuSPARSELt for the
  transposed result (``transpose_result=True``, a contiguous ``[M, N]``). Which is faster depends on
  dtype, shape and algorithm, so the pre-flight times both. :meth:`~CusparseltKernel.search` asks
  cuSPARSELt for its fastest algorithm id of one layout (``torch._cslt_sparse_mm_search``), except
  for fp16 with ``transpose=True``: on an H100 with cuSPARSELt 0.8.0 (torch 2.11.0+cu130,
  2026-11-27) that search failed with ``internal error when calling cusparseLtMatmulSearch`` and
  left the CUDA context broken ("an illegal instruction was encountered" at the next kernel), and
  fp16 ``transpose=True`` with algorithm 0 ran at 0.45-0.6x dense; fp16 ``transpose=False`` and
  bf16 in both layouts searched fine.
- ``reference`` (:class:`ReferenceKernel`): the same interface on any device with ``F.linear``
  (the "packed" weight is the dense weight). It exists so that the runtime's bookkeeping (routes,
  algorithm ids, graphs, artifacts) is tested on machines without a GPU; it is never chosen
  implicitly.

Nothing here is imported by ``import graphprune``.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from graphprune.errors import ConfigError, DependencyError

__all__ = ["KERNELS", "CusparseltKernel", "ReferenceKernel", "SemiKernel", "get_kernel"]


class SemiKernel(Protocol):
    """What the runtime needs from a 2:4 product implementation (see the module docstring)."""

    name: str

    def compress(self, weight: Tensor) -> Tensor: ...

    def mm(self, packed: Tensor, x2: Tensor, bias: Tensor | None, alg_id: int, transpose: bool = False) -> Tensor: ...

    def search(self, packed: Tensor, x2: Tensor, bias: Tensor | None, transpose: bool = False) -> int | None: ...

    def max_alg_id(self) -> int | None: ...

    def version(self) -> str: ...


_PAD_ROWS = 8  # cuSPARSELt's dense_min_rows for fp16/bf16 (torch's _DTYPE_SHAPE_CONSTRAINTS)


class CusparseltKernel:
    """cuSPARSELt through PyTorch's private ops (see the module docstring)."""

    name = "cusparselt"

    def _check(self, t: Tensor) -> None:
        if t.device.type != "cuda":
            raise DependencyError(f"the cusparselt kernel runs on CUDA (sm80+); got a tensor on {t.device}")
        if not torch.backends.cusparselt.is_available():
            raise DependencyError("this PyTorch build has no cuSPARSELt (torch.backends.cusparselt.is_available() is False)")

    def compress(self, weight: Tensor) -> Tensor:
        self._check(weight)
        return torch._cslt_compress(weight.detach().contiguous())

    @staticmethod
    def _padded(x2: Tensor) -> tuple[Tensor, int]:
        m = x2.shape[0]
        pad = (-m) % _PAD_ROWS
        if pad:
            x2 = F.pad(x2, (0, 0, 0, pad))
        return x2, m

    def mm(self, packed: Tensor, x2: Tensor, bias: Tensor | None, alg_id: int, transpose: bool = False) -> Tensor:
        xp, m = self._padded(x2)
        y = torch._cslt_sparse_mm(packed, xp.t(), bias, transpose_result=bool(transpose), alg_id=int(alg_id))
        if transpose:  # [Mp, N], contiguous
            return y[:m] if y.shape[0] != m else y
        return (y[:, :m] if y.shape[1] != m else y).t()  # [N, Mp] -> a [M, N] view

    # (dtype, transpose) pairs whose algorithm search misbehaved (module docstring): never searched
    NO_SEARCH: frozenset[tuple[torch.dtype, bool]] = frozenset({(torch.float16, True)})

    def search(self, packed: Tensor, x2: Tensor, bias: Tensor | None, transpose: bool = False) -> int | None:
        if (x2.dtype, bool(transpose)) in self.NO_SEARCH:
            return None
        xp, _ = self._padded(x2)
        found = torch._cslt_sparse_mm_search(packed, xp.t(), bias, transpose_result=bool(transpose))
        return int(found[0] if isinstance(found, (tuple, list)) else found)

    def max_alg_id(self) -> int | None:
        get = getattr(torch.backends.cusparselt, "get_max_alg_id", None)
        try:
            v = get() if get is not None else None
        except Exception:  # the library could not be initialised: no bound known
            return None
        return int(v) if v is not None else None

    def version(self) -> str:
        v = torch.backends.cusparselt.version()
        if v is None:
            return "unavailable"
        return f"{v // 1000}.{v % 1000 // 100}.{v % 100}"  # MAJOR*1000 + MINOR*100 + PATCH (800 = 0.8.0)


class ReferenceKernel:
    """``F.linear`` behind the kernel interface, on any device (tests and dry runs only)."""

    name = "reference"

    def __init__(self, algs: int = 3) -> None:
        self._algs = algs

    def compress(self, weight: Tensor) -> Tensor:
        return weight.detach().contiguous().clone()

    def mm(self, packed: Tensor, x2: Tensor, bias: Tensor | None, alg_id: int, transpose: bool = False) -> Tensor:
        if not 0 <= int(alg_id) < self._algs:
            raise RuntimeError(f"reference kernel: alg_id {alg_id} out of range [0, {self._algs})")
        y = F.linear(x2, packed, bias)
        return y if transpose else y.t().contiguous().t()  # the cuSPARSELt layouts: contiguous, or a transposed view

    def search(self, packed: Tensor, x2: Tensor, bias: Tensor | None, transpose: bool = False) -> int | None:
        return self._algs - 1 if not transpose else self._algs - 2

    def max_alg_id(self) -> int | None:
        return self._algs - 1

    def version(self) -> str:
        return "reference"


KERNELS: dict[str, SemiKernel] = {"cusparselt": CusparseltKernel(), "reference": ReferenceKernel()}


def get_kernel(name: str) -> SemiKernel:
    """The kernel registered as ``name`` (:data:`KERNELS`); ConfigError naming the known ones otherwise."""
    try:
        return KERNELS[name]
    except KeyError:
        raise ConfigError(f"unknown semi-structured kernel {name!r}; known: {sorted(KERNELS)}") from None
