"""``compute_mask``: one weight and one element-wise pattern -> boolean keep-mask."""

from __future__ import annotations

import torch
from torch import Tensor

from graphprune.config import SemiStructured, Unstructured
from graphprune.errors import ConfigError
from graphprune.sparsity.semi_structured import nm_mask
from graphprune.sparsity.semi_structured_2d import nm_mask_2d
from graphprune.sparsity.unstructured import unstructured_mask


def compute_mask(
    weight: Tensor,
    pattern: Unstructured | SemiStructured,
    *,
    axis: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Boolean keep-mask of ``weight`` for ``pattern``; ``axis`` is the reduction axis K (used by N:M).

    ``Unstructured(method="random")`` draws from ``generator``, or from a fresh generator seeded with
    ``pattern.seed`` when None (so a config alone reproduces the mask). ``Unstructured(scope="global")``
    needs every weight at once: use :func:`global_unstructured_masks` (ConfigError here).
    """
    if isinstance(pattern, Unstructured):
        if pattern.scope != "layer":
            raise ConfigError(
                f"compute_mask handles one weight; pattern {pattern} has scope={pattern.scope!r}: "
                "use global_unstructured_masks(weights, sparsity) for a global threshold"
            )
        if pattern.method == "random" and generator is None:
            generator = torch.Generator().manual_seed(pattern.seed)
        return unstructured_mask(weight, pattern.sparsity, method=pattern.method, generator=generator)
    if isinstance(pattern, SemiStructured):
        if pattern.method == "1d":
            return nm_mask(weight, pattern.n, pattern.m, axis=axis)
        method = {"2d_greedy": "greedy", "2d_best": "best"}[pattern.method]
        return nm_mask_2d(weight, pattern.n, pattern.m, axis=axis, method=method)
    raise ConfigError(f"compute_mask needs an element-wise pattern (Unstructured or SemiStructured), got {pattern!r}")
