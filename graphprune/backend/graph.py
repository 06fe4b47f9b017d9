"""Reading the graph Dynamo hands the ``graphprune`` backend: the helpers its steps share.

IR: the ``torch.fx.GraphModule`` of a Dynamo backend; ``values`` maps the nodes whose tensors are
known at compile time (placeholders fed with ``nn.Parameter``, ``get_attr`` tensors) to those
tensors (:func:`static_weights`). :func:`holder` gives them a module to live in, so the pipeline's
own stages (find, decide, compute-masks) can read them by name; :func:`non_gemm_users` lists the
ops other than GEMMs/convs (through views) that read a weight.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import torch
from torch import Tensor, fx, nn


def readable(node: fx.Node) -> str:
    """``L['self']._modules['fc']._parameters['weight']`` -> ``fc.weight`` (the Dynamo source, cleaned)."""
    ga = node.meta.get("grapharg")
    src = getattr(ga, "source", None)
    name = src.name if isinstance(getattr(src, "name", None), str) else (src.name() if src is not None else None)
    if not isinstance(name, str):
        return str(node.target)
    parts = re.findall(r"\._(?:modules|parameters|buffers)\['([^']+)'\]|\.(\w+)", name)
    out = [a or b for a, b in parts]
    return ".".join(out) if out else name



def weight_arg(node: fx.Node) -> Any:
    if len(node.args) > 1:
        return node.args[1]
    return node.kwargs.get("weight")



def bias_arg(node: fx.Node) -> Any:
    if len(node.args) > 2:
        return node.args[2]
    return node.kwargs.get("bias")



def static_value(node: Any, values: dict[fx.Node, Tensor]) -> Tensor | None:
    if isinstance(node, fx.Node):
        return values.get(node)
    return None



def unique_attr(gm: fx.GraphModule, stem: str) -> str:
    for i in itertools.count():
        name = f"_graphprune_{stem}_{i}"
        if not hasattr(gm, name):
            return name
    raise AssertionError("unreachable")



def static_weights(gm: fx.GraphModule, example_inputs: list[Any]) -> dict[fx.Node, Tensor]:
    """Placeholders fed with nn.Parameters, and get_attr tensors: their current values."""
    values: dict[fx.Node, Tensor] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, example_inputs):
        if isinstance(value, nn.Parameter):
            values[node] = value
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            try:
                t = get_attr(gm, str(node.target))
            except AttributeError:
                continue
            if isinstance(t, Tensor):
                values[node] = t
    return values



def get_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj



def holder(named: dict[str, Tensor]) -> tuple[nn.Module, dict[str, str]]:
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



def non_gemm_users(w_node: fx.Node) -> list[str]:
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


__all__ = [
    "bias_arg",
    "get_attr",
    "holder",
    "non_gemm_users",
    "readable",
    "static_value",
    "static_weights",
    "unique_attr",
    "weight_arg",
]
