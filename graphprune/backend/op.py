"""The opaque custom op ``graphprune::sparse_linear(x, handle)`` that a compiled graph calls for a layer
given a sparse runtime form, and the registry of the kernels behind the handles.

Inductor treats the op as an extern call, so the kernel (a CSR or 2:4 module) runs as it was measured.
The registry holds the kernels weakly: each lives exactly as long as the compiled callable that keeps
it (:class:`graphprune.backend.adapter.CompiledGraph`). The op is defined with torch's library on
first use (a process-wide registration, as torch's op registry is).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from typing import Any, cast

import torch
from torch import Tensor, nn

__all__ = ["SparseLinearOp", "sparse_linear"]


class SparseLinearOp:
    """Kernels by handle, and the op that calls them."""

    def __init__(self) -> None:
        self._kernels: weakref.WeakValueDictionary[int, nn.Module] = weakref.WeakValueDictionary()
        self._handles = itertools.count(1)
        self._lock = threading.Lock()
        self._op: Any = None

    def add(self, kernel: nn.Module) -> int:
        """Register ``kernel`` and return its handle (the caller must keep ``kernel`` alive)."""
        handle = next(self._handles)
        self._kernels[handle] = kernel
        return handle

    def kernel(self, handle: int) -> nn.Module:
        kernel = self._kernels.get(handle)
        if kernel is None:
            raise RuntimeError(f"graphprune sparse_linear kernel {handle} no longer exists (its graph was freed)")
        return kernel

    @property
    def op(self) -> Any:
        """``torch.ops.graphprune.sparse_linear.default`` (defined on first use)."""
        with self._lock:
            if self._op is None:
                if not hasattr(torch.ops.graphprune, "sparse_linear"):
                    registry = self

                    @torch.library.custom_op("graphprune::sparse_linear", mutates_args=())
                    def _sparse_linear(x: Tensor, handle: int) -> Tensor:
                        return registry.kernel(handle)(x).contiguous()

                    @_sparse_linear.register_fake
                    def _(x: Tensor, handle: int) -> Tensor:
                        return x.new_empty((*x.shape[:-1], cast(int, registry.kernel(handle).out_features)))

                self._op = torch.ops.graphprune.sparse_linear.default
        return self._op


sparse_linear = SparseLinearOp()
