"""fold_masks: bake the zeros into plain weights (the *folded* form TensorRT reads).

For a masked module (parametrized by apply_masks) the original parameter is multiplied in place by
its mask and the parametrization removed without re-materializing, so tied weights stay tied and
parameter identity is kept. For modules without parametrizations (TorchScript), the parameter in
``ctx.masks`` is multiplied in place. Post: no WeightMask remains; every pruned weight has exact
zeros where its mask is False; forward outputs equal the masked form's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from graphprune._modules import get_param
from graphprune.config import CompileConfig
from graphprune.passes.base import PassContext, PassResult
from graphprune.passes.fx.apply_masks import WeightMask


def fold_masks(module: nn.Module, config: CompileConfig, ctx: PassContext) -> PassResult:
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
        if folded == 0 and ctx.masks:
            for name, mask in ctx.masks.items():
                p = get_param(module, name)
                p.mul_(mask.to(p.dtype))
                folded += 1
    return PassResult(module, modified=folded > 0, report={"folded": folded})

