"""Shared helpers of the channel-label rules: reading a node's arguments, shapes and labels.

Used by ``_rules_generic`` / ``_rules_shape`` (ops without weights) and ``group_rules`` (ops with
weights). Pure readers of the FX node and the label environment, except :func:`_unknown`, which
blocks every channel group the node's inputs carry (what an op without a rule does).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx

from graphprune.analysis._labels import LabelState, TLabels, module_stack

Env = dict[torch.fx.Node, Any]
Rule = Callable[[LabelState, torch.fx.Node, Env], Any]



def op_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return str(getattr(packet, "__name__", packet)).split(".")[-1]
    return getattr(target, "__name__", str(target))



def shape_of(x: Any) -> tuple[int, ...] | None:
    if isinstance(x, torch.fx.Node):
        x = x.meta.get("val")
    if isinstance(x, torch.Tensor):
        try:
            return tuple(int(s) for s in x.shape)
        except Exception:  # symbolic size
            return None
    return None



def labels_of(env: Env, x: Any) -> TLabels | None:
    if isinstance(x, torch.fx.Node):
        lab = env.get(x)
        if isinstance(lab, tuple):
            return lab
    return None



def _module(node: torch.fx.Node) -> str:
    stack = module_stack(node)
    return stack[-1][0] if stack else ""



def _is_param(st: LabelState, x: Any) -> bool:
    return isinstance(x, torch.fx.Node) and x in st.param_nodes



def _args(node: torch.fx.Node) -> Any:
    return node.args



def _arg(node: torch.fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(_args(node)) > i:
        return _args(node)[i]
    return node.kwargs.get(name, default)



def _unknown(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    for a in node.all_input_nodes:
        st.block_all(env.get(a), f"unsupported op {node.target}", node)
    return None



def _norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d
