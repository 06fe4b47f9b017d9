""":class:`SemiSparseLinear`: an inference Linear whose 2:4 weight is packed once and whose form is
chosen per token count.

A layer serves several input shapes (prefill with thousands of tokens, decode with a few) and the
2:4 kernel wins on some and loses on others, so the choice is per *token count* ``M`` (the rows of
the layer's 2-D input, ``batch × tokens``): ``routes`` maps each measured ``M`` to a :class:`Route`
(``sparse`` with the algorithm id to use, or ``dense``). An ``M`` that was not measured takes the
route of the nearest measured one on a log scale (``M = 64`` between measured 4 and 4096 goes
with 4). With no routes every call is sparse with algorithm 0.

The dense weight is kept (non-persistent buffer ``weight_dense``) only when some route is dense; the
packed weight (``packed``) is non-persistent too, because cuSPARSELt's packed layout depends on the
library version: artifacts store the 2:4 weight in the checkpoint format and pack it again on load
(:mod:`graphprune.runtime.semi_cuda.artifact`). :meth:`SemiSparseLinear.dense_weight` recovers the
exact dense weight from the packed one (a product with the identity: one nonzero per sum, exact).

The output of a sparse route may be a transposed view (the kernel's ``transpose=False`` layout, as
``F.linear`` on a ``to_sparse_semi_structured`` weight returns); ``.contiguous()`` it where a
contiguous tensor is required. The layer is frozen: a dtype change through ``.to()`` / ``.half()`` would reinterpret the packed
bytes and is refused; moving it to another device is refused too (pack again instead).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphprune.errors import ConfigError, InputError
from graphprune.runtime.semi_cuda.kernels import get_kernel

__all__ = ["Route", "SemiSparseLinear", "nearest_tokens"]


@dataclass(frozen=True)
class Route:
    """How one token count runs: ``form`` ``"sparse"`` (with ``alg_id`` and the output layout
    ``transpose``, see :mod:`~graphprune.runtime.semi_cuda.kernels`) or ``"dense"``; ``ratio`` is the
    measured ``dense_ms / sparse_ms`` that decided it (None when not measured)."""

    form: Literal["sparse", "dense"] = "sparse"
    alg_id: int = 0
    ratio: float | None = None
    transpose: bool = False

    def __post_init__(self) -> None:
        if self.form not in ("sparse", "dense"):
            raise ConfigError(f"Route.form must be 'sparse' or 'dense', got {self.form!r}")
        if isinstance(self.alg_id, bool) or not isinstance(self.alg_id, int) or self.alg_id < 0:
            raise ConfigError(f"Route.alg_id must be an int >= 0, got {self.alg_id!r}")
        if not isinstance(self.transpose, bool):
            raise ConfigError(f"Route.transpose must be True or False, got {self.transpose!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"form": self.form, "alg_id": self.alg_id, "transpose": self.transpose, "ratio": self.ratio}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "route") -> Route:
        """Parse a route written by :meth:`to_dict`; InputError naming ``where`` when it is malformed."""
        if not isinstance(d, Mapping):
            raise InputError(f"{where}: a route must be an object, got {type(d).__name__}")
        ratio = d.get("ratio")
        if ratio is not None and not isinstance(ratio, (int, float)):
            raise InputError(f"{where}: ratio must be a number or null, got {ratio!r}")
        try:
            return cls(form=d.get("form", "sparse"), alg_id=d.get("alg_id", 0), ratio=None if ratio is None else float(ratio),
                       transpose=d.get("transpose", False))
        except ConfigError as e:
            raise InputError(f"{where}: {e}") from e


def nearest_tokens(measured: list[int] | tuple[int, ...], tokens: int) -> int:
    """The measured token count closest to ``tokens`` on a log scale (ties: the larger one)."""
    if not measured:
        raise ValueError("no measured token counts")
    lt = math.log2(max(1, tokens))
    return min(measured, key=lambda m: (abs(math.log2(max(1, m)) - lt), -m))


def _parse_routes(routes: Mapping[int, Route | Mapping[str, Any]] | None) -> dict[int, Route]:
    out: dict[int, Route] = {}
    for k, r in (routes or {}).items():
        try:
            tokens = int(k)
        except (TypeError, ValueError):
            raise ConfigError(f"SemiSparseLinear routes: token count {k!r} is not an int") from None
        if tokens < 1:
            raise ConfigError(f"SemiSparseLinear routes: token count must be >= 1, got {tokens}")
        out[tokens] = r if isinstance(r, Route) else Route.from_dict(r, f"route for {tokens} tokens")
    return out


class SemiSparseLinear(nn.Module):
    """``F.linear`` with a 2:4 weight packed for a semi-structured kernel (see the module docstring).

    ``weight`` ``[out, in]`` must already be 2:4 along ``in`` (the kernel keeps the two largest of
    every four; nothing here prunes). ``routes``: token count -> :class:`Route`. ``kernel``: a name in
    :data:`graphprune.runtime.semi_cuda.kernels.KERNELS` (``"cusparselt"``; ``"reference"`` for tests).
    """

    bias: Tensor | None
    packed: Tensor
    weight_dense: Tensor | None

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None = None,
        *,
        routes: Mapping[int, Route | Mapping[str, Any]] | None = None,
        kernel: str = "cusparselt",
    ) -> None:
        super().__init__()
        if weight.dim() != 2 or not weight.is_floating_point():
            raise ConfigError(f"SemiSparseLinear needs a 2-D floating weight, got {weight.dtype}{list(weight.shape)}")
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise ConfigError(f"SemiSparseLinear: bias shape {list(bias.shape)} does not match out_features {weight.shape[0]}")
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.kernel = kernel
        self._kernel = get_kernel(kernel)
        self.routes: dict[int, Route] = _parse_routes(routes)
        self._measured = sorted(self.routes)
        w = weight.detach()
        self.register_buffer("packed", self._kernel.compress(w), persistent=False)
        keep_dense = any(r.form == "dense" for r in self.routes.values())
        self.register_buffer("weight_dense", w.contiguous().clone() if keep_dense else None, persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().to(w.dtype).clone())
        self.dtype = w.dtype

    def route(self, tokens: int) -> Route:
        """The route for an input of ``tokens`` rows (see the module docstring)."""
        if not self.routes:
            return Route()
        r = self.routes.get(tokens)
        return r if r is not None else self.routes[nearest_tokens(self._measured, tokens)]

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, self.in_features)
        r = self.route(x2.shape[0])
        if r.form == "dense" and self.weight_dense is not None:
            y = F.linear(x2, self.weight_dense, self.bias)
        else:
            y = self._kernel.mm(self.packed, x2, self.bias, r.alg_id, r.transpose)
        return y.reshape(*x.shape[:-1], self.out_features)

    def sparse_mm(self, x: Tensor, alg_id: int, transpose: bool = False) -> Tensor:
        """The sparse product with ``alg_id`` and layout ``transpose``, whatever the routes say (the
        pre-flight times this)."""
        x2 = x.reshape(-1, self.in_features)
        return self._kernel.mm(self.packed, x2, self.bias, alg_id, transpose).reshape(*x.shape[:-1], self.out_features)

    @torch.no_grad()
    def dense_weight(self, chunk: int = 4096) -> Tensor:
        """The dense ``[out, in]`` weight (zeros included), recovered exactly from the packed one."""
        if self.weight_dense is not None:
            return self.weight_dense.clone()
        cols = []
        for start in range(0, self.in_features, chunk):
            stop = min(self.in_features, start + chunk)
            eye = torch.zeros(stop - start, self.in_features, dtype=self.dtype, device=self.packed.device)
            eye[:, start:stop].fill_diagonal_(1)
            cols.append(self._kernel.mm(self.packed, eye, None, 0))  # rows of W.T for these inputs
        return torch.cat(cols, 0).t().contiguous()

    def with_routes(self, routes: Mapping[int, Route | Mapping[str, Any]]) -> SemiSparseLinear:
        """Set new routes in place (the dense copy is made or dropped as they need); returns self."""
        new = _parse_routes(routes)
        keep_dense = any(r.form == "dense" for r in new.values())
        if keep_dense and self.weight_dense is None:
            self.weight_dense = self.dense_weight()
        elif not keep_dense:
            self.weight_dense = None
        self.routes, self._measured = new, sorted(new)
        return self

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> SemiSparseLinear:
        probe = fn(torch.empty(0, dtype=self.packed.dtype, device=self.packed.device))
        if probe.dtype != self.packed.dtype or probe.device != self.packed.device:
            raise ConfigError(
                f"SemiSparseLinear ({self.out_features}x{self.in_features}) is packed for {self.packed.dtype} on "
                f"{self.packed.device}: convert the dense model before packing, not after (got {probe.dtype} on {probe.device})"
            )
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        routes = ", ".join(
            f"{t}:{r.form}" + (f"@alg{r.alg_id}{'t' if r.transpose else ''}" if r.form == "sparse" else "") for t, r in sorted(self.routes.items())
        )
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"kernel={self.kernel}, routes={{{routes or 'all:sparse@alg0'}}}, dense_copy={self.weight_dense is not None}"
        )
