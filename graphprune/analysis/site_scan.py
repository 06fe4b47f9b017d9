"""The result of a site finder, and the helpers both finders use to fill a :class:`Site`.

:class:`SiteScan` is what :func:`graphprune.analysis.find_sites.find_sites` returns, from a graph
or (through :mod:`graphprune.analysis.walk_sites`) from the module walk. The helpers read an fx
node's metadata (example value, rank, output size, the user's source line) and derive a site's op
name and FLOPs from it; they read the graph and never change it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from graphprune.analysis.sites import Site


def module_of(param_fqn: str) -> str:
    return param_fqn.rpartition(".")[0]


def _op_name(kind: str, module_type: str, rank: int) -> str:
    if kind == "conv":
        return f"conv{rank - 2}d"
    if kind == "conv_transpose":
        return f"conv_transpose{rank - 2}d"
    if kind == "matmul" and module_type.endswith(".Conv1D"):
        return "hf_conv1d"
    if kind == "linear" and module_type.endswith("MultiheadAttention"):
        return "mha_in_proj"
    return kind


def _val(node: fx.Node) -> Any:
    """The node's example value: ``val`` (torch.export) or ``example_value`` (Dynamo graphs)."""
    val = node.meta.get("val")
    return val if val is not None else node.meta.get("example_value")


def _rank(node: fx.Node) -> int | None:
    val = _val(node)
    if isinstance(val, torch.Tensor):
        return val.dim()
    tm = node.meta.get("tensor_meta")
    if tm is not None and hasattr(tm, "shape"):
        return len(tm.shape)
    return None


def _out_numel(node: fx.Node) -> int:
    val = _val(node)
    if isinstance(val, torch.Tensor):
        try:
            return int(val.numel())
        except Exception:  # symbolic shapes
            return 0
    tm = node.meta.get("tensor_meta")
    if tm is not None and hasattr(tm, "shape"):
        n = 1
        for s in tm.shape:
            n *= int(s)
        return n
    return 0


def _source_line(node: fx.Node) -> str | None:
    st = node.meta.get("stack_trace")
    if not st:
        return None
    lines = [ln.strip() for ln in st.strip().splitlines() if ln.strip().startswith("File ")]
    # the innermost frame outside torch itself: the user's (or transformers') line that made the op
    user = [ln for ln in lines if "/torch/" not in ln]
    return (user or lines)[-1] if lines else None


def _flops(node: fx.Node, kind: str, shape: tuple[int, ...], k_axis: int) -> int:
    """2 x multiply-accumulates of the op for the example inputs (0 where shapes are unknown)."""
    kernel = 1
    for s in shape[2:]:
        kernel *= s
    if kind == "conv_transpose":
        # every input element meets (out/groups) x kernel weights
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        return 2 * (_out_numel(src) if src is not None else 0) * shape[1] * kernel
    if kind == "conv":
        return 2 * _out_numel(node) * shape[1] * kernel
    return 2 * _out_numel(node) * shape[k_axis]


@dataclass
class SiteScan:
    sites: list[Site]
    unsupported: list[tuple[str, str]]  # (param fqn, why)
