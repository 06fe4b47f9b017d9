"""Pass ``compute-masks``: one boolean keep-mask per pruned site, by magnitude (no rewrite; fills ``ctx.masks``).

Pre: ``ctx.patterns`` names the pruned sites and their patterns. Post: ``ctx.masks[param]`` is a
bool tensor of the weight's shape (True = keep); each Decision gets ``zeros`` and
``kept_magnitude``. NaN/Inf weights raise WeightError naming the layer. Unstructured patterns
with ``scope="global"`` share one magnitude threshold across all their sites.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from graphprune import sparsity
from graphprune._module_tensors import get_tensor
from graphprune.config import Unstructured
from graphprune.passes.base import PassContext, PassResult, register_pass

__all__ = ["MasksReport", "compute_masks"]


@dataclass(frozen=True)
class MasksReport:
    masks: int
    zeros: int

    def to_dict(self) -> dict[str, Any]:
        return {"masks": self.masks, "zeros": self.zeros}


@register_pass("compute-masks")
def compute_masks(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Compute a keep-mask for every pruned site from its weight's magnitude and pattern."""
    weights = {name: get_tensor(module, name).detach() for name in ctx.patterns}
    for name, w in weights.items():
        sparsity.check_finite(w, f"{name} (layer {ctx.sites[name].module})")
    global_sites = [n for n, p in ctx.patterns.items() if isinstance(p, Unstructured) and p.scope == "global"]
    if global_sites:
        sp = ctx.patterns[global_sites[0]].sparsity  # config validation allows one element pattern
        ctx.masks.update(sparsity.global_unstructured_masks({n: weights[n] for n in global_sites}, sp))
    items = [(n, p) for n, p in ctx.patterns.items() if n not in ctx.masks]
    for name, pattern in tqdm(items, desc="masks", disable=not ctx.progress, leave=False):
        gen = None
        if isinstance(pattern, Unstructured) and pattern.method == "random":
            gen = torch.Generator().manual_seed(pattern.seed)
        ctx.masks[name] = sparsity.compute_mask(weights[name], pattern, axis=ctx.sites[name].k_axis, generator=gen)
    for name, mask in ctx.masks.items():
        d = ctx.decisions[name]
        d.zeros = int((~mask).sum()) + int(((weights[name] == 0) & mask).sum())
        d.kept_magnitude = sparsity.kept_magnitude(weights[name], mask)
    zeros = sum(ctx.decisions[n].zeros for n in ctx.masks)
    return PassResult(module, modified=False, report=MasksReport(len(ctx.masks), zeros))
