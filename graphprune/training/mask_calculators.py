"""ASP's mask calculators: what ``mask_calculator=`` accepts, turned into ``(weight, k_axis) -> mask``.

A spec is an ASP name (``"m4n2_1d"``, ``"m4n2_2d_greedy"``, ``"m4n2_2d_best"``, or any
``mMnN_...``), a ``SemiStructured`` / layer-scope ``Unstructured`` config (computed by
:func:`graphprune.sparsity.masks.compute_mask`), or a callable. The resolved calculator returns a
bool mask of the weight's shape (``True`` = keep) and never changes the weight; a spec it cannot
use raises ConfigError naming the allowed forms.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import torch

from graphprune.config import SemiStructured, Unstructured
from graphprune.errors import ConfigError

__all__ = ["MaskCalculator", "MaskCalculatorSpec", "resolve_mask_calculator"]

MaskCalculator = Callable[[torch.Tensor, int], torch.Tensor]  # (weight, k_axis) -> bool mask, True = keep
MaskCalculatorSpec = Union[str, SemiStructured, Unstructured, MaskCalculator]

_ASP_NAME = re.compile(r"^m(\d+)n(\d+)_(1d|2d_greedy|2d_best)$")


@dataclass(frozen=True)
class _Calculator:
    fn: MaskCalculator
    name: str
    n: int | None = None  # N:M parameters, when the calculator is N:M along K
    m: int | None = None


def resolve_mask_calculator(spec: MaskCalculatorSpec) -> _Calculator:
    """Turn ``"m4n2_1d"`` / ``"m4n2_2d_greedy"`` / ``"m4n2_2d_best"`` (any ``mMnN_...``), a
    ``SemiStructured`` / ``Unstructured`` config or a callable ``(weight, k_axis) -> bool mask`` into
    a calculator."""
    if isinstance(spec, str):
        match = _ASP_NAME.match(spec)
        if not match:
            raise ConfigError(
                f"mask_calculator {spec!r} is not understood; use 'm4n2_1d', 'm4n2_2d_greedy', 'm4n2_2d_best' "
                "(or mMnN_... for other N:M), a SemiStructured/Unstructured config, or a callable (weight, k_axis) -> mask"
            )
        m, n, kind = int(match.group(1)), int(match.group(2)), match.group(3)
        spec = SemiStructured(n=n, m=m, method=kind)  # type: ignore[arg-type]
    if isinstance(spec, (SemiStructured, Unstructured)):
        pattern = spec

        def calc(weight: torch.Tensor, k_axis: int) -> torch.Tensor:
            from graphprune.sparsity.masks import compute_mask

            return compute_mask(weight, pattern, axis=k_axis)

        if isinstance(spec, SemiStructured):
            return _Calculator(calc, str(spec), spec.n, spec.m)
        if spec.scope != "layer":
            raise ConfigError(
                f"mask_calculator {spec} has scope={spec.scope!r}; ASP computes masks layer by layer "
                "(use GradualPruner(scope='global') or ASP.set_masks for a global threshold)"
            )
        return _Calculator(calc, str(spec))
    if callable(spec):
        return _Calculator(spec, getattr(spec, "__name__", "custom"))
    raise ConfigError(f"mask_calculator must be a name, a pattern config or a callable, got {spec!r}")
