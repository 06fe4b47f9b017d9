"""Step 1 of the ``graphprune`` Dynamo backend (:mod:`graphprune.backend`): prune the weights of the
graph Dynamo hands it, plus the graph helpers the backend's steps share.

IR: the ``torch.fx.GraphModule`` of a Dynamo backend; ``values`` maps the nodes whose tensors are
known at compile time (placeholders fed with ``nn.Parameter``, ``get_attr`` tensors) to those
tensors (:func:`_static_weights`). :func:`_prune` masks every weight
:func:`graphprune.analysis.find_sites.find_sites` finds along its own reduction axis K and that no
other op reads (:func:`_non_gemm_users`): grad mode off, the pruned weight becomes a constant of
the graph; grad mode on, the live parameter is multiplied by a constant mask. The user's
parameters are never modified; every weight is recorded in the ``BackendReport`` (pruned, or
skipped with the reason). New nodes carry ``meta["graphprune"] = {"pass": "backend-prune"}``.
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, fx, nn

from graphprune.config import SemiStructured

if TYPE_CHECKING:
    from graphprune.backend import BackendOptions, BackendReport


def _readable(node: fx.Node) -> str:
    """``L['self']._modules['fc']._parameters['weight']`` -> ``fc.weight`` (the Dynamo source, cleaned)."""
    ga = node.meta.get("grapharg")
    src = getattr(ga, "source", None)
    name = src.name if isinstance(getattr(src, "name", None), str) else (src.name() if src is not None else None)
    if not isinstance(name, str):
        return str(node.target)
    parts = re.findall(r"\._(?:modules|parameters|buffers)\['([^']+)'\]|\.(\w+)", name)
    out = [a or b for a, b in parts]
    return ".".join(out) if out else name



def _weight_arg(node: fx.Node) -> Any:
    if len(node.args) > 1:
        return node.args[1]
    return node.kwargs.get("weight")



def _bias_arg(node: fx.Node) -> Any:
    if len(node.args) > 2:
        return node.args[2]
    return node.kwargs.get("bias")



def _static_value(node: Any, values: dict[fx.Node, Tensor]) -> Tensor | None:
    if isinstance(node, fx.Node):
        return values.get(node)
    return None



def _unique_attr(gm: fx.GraphModule, stem: str) -> str:
    for i in itertools.count():
        name = f"_graphprune_{stem}_{i}"
        if not hasattr(gm, name):
            return name
    raise AssertionError("unreachable")



def _static_weights(gm: fx.GraphModule, example_inputs: list[Any]) -> dict[fx.Node, Tensor]:
    """Placeholders fed with nn.Parameters, and get_attr tensors: their current values."""
    values: dict[fx.Node, Tensor] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, example_inputs):
        if isinstance(value, nn.Parameter):
            values[node] = value
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            try:
                t = _get_attr(gm, str(node.target))
            except AttributeError:
                continue
            if isinstance(t, Tensor):
                values[node] = t
    return values



def _get_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj



def _holder(named: dict[str, Tensor]) -> tuple[nn.Module, dict[str, str]]:
    """A module owning ``named`` tensors as parameters under their dotted names, so that
    :func:`~graphprune.analysis.find_sites.find_sites` can read them; returns it and the name each
    tensor got (``_param{i}`` where the dotted name cannot be a module path)."""
    root = nn.Module()
    got: dict[str, str] = {}
    for i, (name, t) in enumerate(named.items()):
        p = t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False)
        parts = name.split(".")
        mod: nn.Module | None = root
        if all(x.isidentifier() for x in parts):
            for x in parts[:-1]:
                child = mod._modules.get(x) if mod is not None else None
                if child is None and mod is not None:
                    if hasattr(mod, x):
                        mod = None
                        break
                    child = nn.Module()
                    mod.add_module(x, child)
                mod = child
        else:
            mod = None
        if mod is None or hasattr(mod, parts[-1]):
            mod, parts = root, [f"_param{i}"]
        mod.register_parameter(parts[-1], p)
        got[name] = ".".join(parts) if mod is not root else parts[-1]
    return root, got



_VIEW_METHODS = {"t", "transpose", "permute", "contiguous", "to", "float", "half", "bfloat16", "detach"}



def _non_gemm_users(w_node: fx.Node) -> list[str]:
    """Ops that read ``w_node`` other than GEMM/conv ops and the view ops leading into them."""
    from graphprune.analysis.find_sites import _IDENTITY_OPS, _SWAP_OPS, PRUNABLE_OPS

    views = _IDENTITY_OPS | _SWAP_OPS | {torch.t, torch.transpose, torch.permute}
    out: list[str] = []
    todo, seen = [w_node], set()
    while todo:
        n = todo.pop()
        for u in n.users:
            if u in seen:
                continue
            seen.add(u)
            if u.op == "call_function" and u.target in PRUNABLE_OPS:
                continue
            if (u.op == "call_method" and u.target in _VIEW_METHODS) or (u.op == "call_function" and u.target in views):
                todo.append(u)
                continue
            out.append(str(u.target) if u.op == "call_method" else getattr(u.target, "__name__", str(u.target)))
    return sorted(set(out))



def _prune(gm: fx.GraphModule, values: dict[fx.Node, Tensor], opts: BackendOptions, report: BackendReport) -> None:
    """Mask every weight :func:`find_sites` finds in the Dynamo graph (Linear, Conv, HF Conv1D via addmm,
    ``x @ W``, ...) along its own reduction axis K, as ``graphprune.compile`` does."""
    from graphprune.analysis.find_sites import find_sites
    from graphprune.capture import Capture
    from graphprune.sparsity import compute_mask, kept_magnitude

    pattern = opts.pattern
    if pattern is None:
        return
    readable = {node: _readable(node) if node.op == "placeholder" else str(node.target) for node in values}
    holder, held = _holder({readable[n]: values[n] for n in values})
    node_of = {held[readable[n]]: n for n in values}
    placeholders = {n.name: held[readable[n]] for n in values if n.op == "placeholder"}
    scan = find_sites(Capture(method="fx", module=holder, graph=gm.graph, param_of_placeholder=placeholders))
    by_held = {v: k for k, v in held.items()}
    grad = torch.is_grad_enabled()
    for site in scan.sites:
        w_node, name = node_of.get(site.param), by_held.get(site.param, site.param)
        if w_node is None:
            continue
        others = _non_gemm_users(w_node)
        if site.ties or others:
            why = f"also read by {', '.join(others)}" if others else f"the same tensor as {', '.join(site.ties)}"
            report.skipped.append({"weight": name, "reason": f"{why}: pruning only its GEMM/conv uses would be inconsistent"})
            continue
        w = values[w_node].detach()
        if not w.is_floating_point() or w.dim() < 2:
            report.skipped.append({"weight": name, "reason": f"dtype {w.dtype} / rank {w.dim()} is not a prunable weight"})
            continue
        if isinstance(pattern, SemiStructured) and site.k % pattern.m:
            report.skipped.append(
                {"weight": name, "reason": f"K = {site.k} (axis {site.k_axis}) is not a multiple of M = {pattern.m} (k_not_divisible)"}
            )
            continue
        mask = compute_mask(w, pattern, axis=site.k_axis)
        report.pruned.append(
            {"weight": name, "op": site.op, "k_axis": site.k_axis, "pattern": str(pattern), "kept_magnitude": kept_magnitude(w, mask)}
        )
        if grad:  # masked form: live parameter x constant mask, gradients reach the parameter
            attr = _unique_attr(gm, "mask")
            gm.register_buffer(attr, mask.to(w.dtype))
            with gm.graph.inserting_after(w_node):
                mask_node = gm.graph.get_attr(attr)
            with gm.graph.inserting_after(mask_node):
                new = gm.graph.call_function(torch.mul, (w_node, mask_node))
        else:  # inference: the pruned weight is a constant of the graph
            attr = _unique_attr(gm, "weight")
            gm.register_buffer(attr, (w * mask).contiguous())
            with gm.graph.inserting_after(w_node):
                new = gm.graph.get_attr(attr)
            values[new] = getattr(gm, attr)
        new.meta["graphprune"] = {"pass": "backend-prune"}
        keep_self: Callable[[fx.Node], bool] = functools.partial(operator.is_not, new)
        w_node.replace_all_uses_with(new, delete_user_cb=keep_self)
