"""Pass ``fold-masks``: bake the zeros into plain weights (the *folded* form TensorRT reads), and prove it.

For a masked module (parametrized by ``apply-masks``) the original parameter is multiplied in place by
its mask and the parametrization removed without re-materializing, so tied weights stay tied and
parameter identity is kept. For modules without parametrizations (TorchScript), the parameter in
``ctx.masks`` is multiplied in place.

Check: the module runs on the example inputs before folding (the masked form) and after (the folded
form); the outputs must match under the one tolerance policy
(:func:`graphprune.runtime.compare.compare_outputs`), else ValidationError. A module that was not
parametrized (TorchScript) has no masked form to compare with, and the report says so.

Post: no WeightMask remains; every pruned weight has exact zeros where its mask is False; the folded
outputs are left in ``ctx.artifacts["reference_outputs"]``. For the folded form the masks are freed
(the zeros are in the weights; on a 1B model the bool masks are a gigabyte).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from graphprune._module_tensors import get_tensor
from graphprune.errors import ValidationError
from graphprune.passes.apply_masks import WeightMask
from graphprune.passes.base import PassContext, PassResult, register_pass

__all__ = ["FoldReport", "fold_masks", "fold_parametrizations"]


@dataclass(frozen=True)
class FoldReport:
    folded: int
    masked_vs_folded: dict[str, Any] | None  # the comparison's statistics (None: no masked form to compare)

    def to_dict(self) -> dict[str, Any]:
        return {"folded": self.folded, "masked_vs_folded": self.masked_vs_folded}


def fold_parametrizations(module: nn.Module) -> int:
    """Fold every WeightMask parametrization of ``module`` in place; return how many were folded."""
    folded = 0
    with torch.no_grad():
        for sub in list(module.modules()):
            if not parametrize.is_parametrized(sub):
                continue
            params: nn.ModuleDict = sub.parametrizations  # type: ignore[assignment]
            for pname in list(params.keys()):
                plist: Any = params[pname]
                if not all(isinstance(p, WeightMask) for p in plist):
                    continue
                original = plist.original
                for p in plist:
                    original.mul_(p.mask.to(original.dtype))
                parametrize.remove_parametrizations(sub, pname, leave_parametrized=False)
                folded += 1
    return folded


def _run(module: nn.Module, inputs: tuple[Any, ...]) -> Any:
    with torch.no_grad():
        return module(*inputs)


@register_pass("fold-masks", mutates=("structure",))
def fold_masks(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Bake the masks into plain weights in place and check the folded outputs equal the masked ones."""
    from graphprune.runtime.compare import compare_outputs

    masked_out = _run(module, ctx.example_inputs) if _has_masks(module) else None
    folded = fold_parametrizations(module)
    if folded == 0 and ctx.masks:
        with torch.no_grad():
            for name, mask in ctx.masks.items():
                p = get_tensor(module, name)
                p.mul_(mask.to(p.dtype))
                folded += 1
    folded_out = _run(module, ctx.example_inputs)
    stats = None
    if masked_out is not None:
        cmp = compare_outputs(masked_out, folded_out, name="masked vs folded")
        stats = cmp.to_dict()
        if not cmp.ok:
            raise ValidationError(f"folded model differs from the masked model: {cmp.summary()}")
    ctx.artifacts["reference_outputs"] = folded_out
    if ctx.config.form == "folded" and ctx.config.target != "cuda":
        ctx.masks.clear()  # the zeros are in the weights now: free the bool masks (1 byte per weight)
    return PassResult(module, modified=folded > 0, report=FoldReport(folded, stats))


def _has_masks(module: nn.Module) -> bool:
    return any(
        parametrize.is_parametrized(sub) and any(isinstance(p, WeightMask) for plist in sub.parametrizations.values() for p in plist)  # type: ignore[operator]
        for sub in module.modules()
    )
