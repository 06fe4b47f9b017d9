"""Pass ``apply-masks``: rewrite pruned weights into the *masked* form.

Each pruned parameter gets a parametrization ``weight = original * mask`` (``mask`` a registered
buffer, so it lives in the state_dict). The module stays trainable and the gradient of every
pruned element of ``original`` is exactly zero (d(w*m)/dw = m). Every module that holds the same
Parameter (tied weights) gets the same mask. Captured graphs re-exported from the masked module
carry one ``mul`` per pruned weight.

Pre: ``ctx.masks``. Post: ``module`` computes with masked weights; ``fold_masks`` undoes the
parametrization with the zeros baked in. TorchScript modules cannot be parametrized: use
``form="folded"`` (fold_masks handles them directly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from graphprune.errors import UnsupportedModelError
from graphprune.passes.base import PassContext, PassResult, register_pass

__all__ = ["ApplyMasksReport", "WeightMask", "apply_masks", "owners"]


class WeightMask(nn.Module):
    """Parametrization: multiplies the weight by a fixed boolean mask (stored as a buffer)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask: torch.Tensor = self.mask  # type: ignore[assignment]
        return weight * mask.to(weight.dtype)


def owners(module: nn.Module, param: str) -> list[tuple[nn.Module, str]]:
    """Every (submodule, attribute) that holds the tensor named ``param`` (ties included)."""
    target = module.get_parameter(param)
    out = []
    for sub in module.modules(remove_duplicate=False):
        for pname, p in sub.named_parameters(recurse=False):
            if p is target:
                out.append((sub, pname))
    return out


@dataclass(frozen=True)
class ApplyMasksReport:
    parametrized: int

    def to_dict(self) -> dict[str, Any]:
        return {"parametrized": self.parametrized}


@register_pass("apply-masks", mutates=("structure",))
def apply_masks(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Parametrize every pruned weight as ``original * mask`` (trainable; pruned gradients are zero)."""
    if isinstance(module, torch.jit.ScriptModule):
        raise UnsupportedModelError(
            "TorchScript models cannot carry mask parametrizations; use form='folded' (the default)"
        )
    count = 0
    for name, mask in ctx.masks.items():
        for sub, pname in owners(module, name):
            parametrize.register_parametrization(sub, pname, WeightMask(mask), unsafe=True)
            count += 1
    return PassResult(module, modified=count > 0, report=ApplyMasksReport(count))
