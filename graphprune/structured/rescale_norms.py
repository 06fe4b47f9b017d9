"""rescale_norms: keep an RMSNorm exact after channels of the stream it normalizes were removed.

IR: the eager ``nn.Module``. Mutates in place.

Maths: in the masked model the removed channels of a residual stream are exactly zero everywhere, so
an RMSNorm over all ``n`` channels computes ``x / sqrt(S / n + eps)`` with ``S`` the sum of squares
of the kept channels. The shrunk model's norm sees ``n_kept`` channels: ``x / sqrt(S / n_kept + eps)``.
With ``s = n / n_kept``::

    x / sqrt(S / n + eps) = sqrt(s) * x / sqrt(S / n_kept + eps * s)

so scaling the norm's weight by ``sqrt(s)`` and its eps by ``s`` makes the two equal (up to float
rounding). A LayerNorm has no such fix (its mean over the kept channels differs), which is why the
analysis only lets RMSNorm streams be pruned. Norms whose forward applies the weight differently
(e.g. Gemma's ``1 + weight``) are caught by the parity check after the rewrite.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from graphprune.errors import WeightError

EPS_ATTRS = ("variance_epsilon", "eps", "epsilon")


def rescale_rms_norm(module: nn.Module, n: int, n_kept: int, *, name: str = "") -> dict[str, Any]:
    """Scale ``module.weight`` by sqrt(n / n_kept) and its eps by n / n_kept; return the attributes set."""
    if not 0 < n_kept <= n:
        raise WeightError(f"RMSNorm {name or type(module).__name__}: cannot keep {n_kept} of {n} channels")
    scale = n / n_kept
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise WeightError(f"RMSNorm {name or type(module).__name__} has no weight tensor to rescale")
    for attr in EPS_ATTRS:
        if hasattr(module, attr):
            eps = getattr(module, attr)
            if eps is None:  # torch.nn.RMSNorm: eps=None means finfo(input dtype).eps at run time
                eps = torch.finfo(weight.dtype).eps
            if not isinstance(eps, (int, float)):
                raise WeightError(f"RMSNorm {name}: {attr} is {eps!r}, not a number")
            new_eps = float(eps) * scale
            break
    else:
        raise WeightError(
            f"RMSNorm {name or type(module).__name__} has no eps attribute ({', '.join(EPS_ATTRS)}): "
            "graphprune cannot keep it exact after removing channels; exclude this stream"
        )
    with torch.no_grad():
        weight.mul_(math.sqrt(scale))
    setattr(module, attr, new_eps)
    return {attr: new_eps}


__all__ = ["EPS_ATTRS", "rescale_rms_norm"]
