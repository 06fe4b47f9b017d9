"""Step 1 of the ``graphprune`` backend: prune the weights of the graph Dynamo hands it, through the
pipeline's own stages.

The weights the graph reads at compile time (``values``: parameters fed to placeholders, ``get_attr``
tensors) are given a module to live in (:func:`graphprune.backend.graph.holder`), and the stages that
``graphprune.compile`` runs decide and compute the masks: ``find`` (the same op registry: Linear,
Conv, HF Conv1D via ``addmm``, ``x @ W``, each with its own K axis), ``decide`` (the same rules and
reason codes: tied weights, K not a multiple of M, non-floating weights) and ``compute-masks``. One
rule is the backend's own: a weight some other op also reads through views (``non_gemm_users``) stays
dense, since only its GEMM uses would see the mask.

Then the graph is rewritten: grad mode off, the pruned weight becomes a constant of the graph; grad
mode on, the live parameter is multiplied by a constant mask (gradients reach it, masked). The user's
parameters are never modified. New nodes carry ``meta["graphprune"] = {"pass": "backend-prune"}``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable

import torch
from torch import Tensor, fx

from graphprune.backend.graph import holder, non_gemm_users, readable, unique_attr
from graphprune.backend.options import BackendOptions, BackendReport
from graphprune.capture import Capture
from graphprune.config import CompileConfig
from graphprune.passes.base import PassContext, run_stages, stage
from graphprune.report import SkipReason

__all__ = ["prune_graph"]


def prune_graph(gm: fx.GraphModule, values: dict[fx.Node, Tensor], opts: BackendOptions, report: BackendReport) -> None:
    """Mask every weight of ``gm`` the pipeline's find/decide stages prune (see the module docstring)."""
    import graphprune.passes.all  # noqa: F401  (registers the stages)

    if opts.pattern is None:
        return
    names = {node: readable(node) if node.op == "placeholder" else str(node.target) for node in values}
    root, held = holder({names[n]: values[n] for n in values})
    node_of = {held[names[n]]: n for n in values}
    user_name = {v: k for k, v in held.items()}
    placeholders = {n.name: held[names[n]] for n in values if n.op == "placeholder"}
    ctx = PassContext((), config=CompileConfig(pattern=(opts.pattern,)))
    ctx.capture = Capture(method="fx", module=root, graph=gm.graph, param_of_placeholder=placeholders)
    run_stages([stage("find"), stage("decide")], root, ctx)
    for name in [n for n in ctx.patterns if n in node_of]:
        others = non_gemm_users(node_of[name])
        if others:
            d = ctx.decisions[name]
            d.pruned, d.pattern, d.reason = False, None, SkipReason.TIED_WEIGHT
            d.message = f"{name}: also read by {', '.join(others)}: pruning only its GEMM/conv uses would be inconsistent"
            del ctx.patterns[name]
    for name in [n for n in ctx.patterns if n not in node_of]:
        del ctx.patterns[name]
    run_stages([stage("compute-masks")], root, ctx)
    grad = torch.is_grad_enabled()
    for name, d in ctx.decisions.items():
        shown = user_name.get(name, name)
        if name not in ctx.masks:
            why = d.reason.value if d.reason else "not pruned"
            report.skipped.append({"weight": shown, "reason": f"{d.message.replace(name, shown)} ({why})"})
            continue
        w_node, mask = node_of[name], ctx.masks[name]
        w = values[w_node].detach()
        report.pruned.append(
            {"weight": shown, "op": d.op, "k_axis": d.k_axis, "pattern": d.pattern, "kept_magnitude": d.kept_magnitude}
        )
        if grad:  # masked form: live parameter x constant mask, gradients reach the parameter
            attr = unique_attr(gm, "mask")
            gm.register_buffer(attr, mask.to(w.dtype))
            with gm.graph.inserting_after(w_node):
                mask_node = gm.graph.get_attr(attr)
            with gm.graph.inserting_after(mask_node):
                new = gm.graph.call_function(torch.mul, (w_node, mask_node))
        else:  # inference: the pruned weight is a constant of the graph
            attr = unique_attr(gm, "weight")
            gm.register_buffer(attr, (w * mask).contiguous())
            with gm.graph.inserting_after(w_node):
                new = gm.graph.get_attr(attr)
            values[new] = getattr(gm, attr)
        new.meta["graphprune"] = {"pass": "backend-prune"}
        keep_self: Callable[[fx.Node], bool] = functools.partial(operator.is_not, new)
        w_node.replace_all_uses_with(new, delete_user_cb=keep_self)
