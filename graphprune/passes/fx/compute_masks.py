"""compute_masks: one boolean keep-mask per pruned site (no rewrite; fills ``ctx.masks``).

Pre: ``ctx.patterns`` names the pruned sites and their patterns. Post: ``ctx.masks[param]`` is a
bool tensor of the weight's shape (True = keep); each Decision gets ``zeros`` and
``kept_magnitude``. NaN/Inf weights raise WeightError naming the layer. Unstructured patterns
with ``scope="global"`` share one magnitude threshold across all their sites.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from graphprune import sparsity
from graphprune._modules import get_param
from graphprune.config import CompileConfig, Unstructured
from graphprune.passes.base import PassContext, PassResult


def compute_masks(module: nn.Module, config: CompileConfig, ctx: PassContext) -> PassResult:
    weights = {name: get_param(module, name).detach() for name in ctx.patterns}
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
    return PassResult(module, modified=False, report={"masks": len(ctx.masks)})
