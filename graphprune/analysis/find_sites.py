"""Find every prunable weight in a captured model (read-only analysis).

Input: a :class:`~graphprune.capture.Capture`. Output: a list of :class:`Site` (one per weight
tensor, keyed by its parameter fqn) plus the 2-D+ floating parameters that no supported op reads
(``unsupported``: they get a Decision too, so nothing is skipped silently).

Graph captures (torch.export aten graphs and fx graphs) are read op by op through the registry
``PRUNABLE_OPS``; the weight operand is followed back through view-like ops (t, transpose,
permute, dtype casts, detach, contiguous, slicing) to the parameter, and the reduction axis K of the
op is mapped back to the parameter's own axes. The module walk (no graph) knows only whitelisted
module types (``WALK_TYPES``); it lives in :mod:`graphprune.analysis.walk_sites`.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from graphprune.analysis.site_scan import SiteScan, _flops, _op_name, _rank, _source_line, module_of
from graphprune.analysis.sites import Site
from graphprune.analysis.walk_sites import WALK_TYPES as WALK_TYPES
from graphprune.analysis.walk_sites import _fx_module_site, _walk_sites
from graphprune.capture import Capture

aten = torch.ops.aten


@dataclass(frozen=True)
class OpSpec:
    """How to read one op kind: which argument is the weight and where K is."""

    kind: str  # op family reported in decisions
    weight_arg: int  # positional index of the weight operand
    k_of_operand: Callable[[int], int]  # operand rank -> K axis in the operand's own axes
    groups_arg: int | None = None
    conv_dims: int = 0  # 1/2/3 for convs (from the weight rank when 0)
    transposed_arg: int | None = None  # aten.convolution's `transposed`


def _last(rank: int) -> int:
    return rank - 1


def _second_last(rank: int) -> int:
    return rank - 2


def _axis1(rank: int) -> int:
    return 1


def _axis0(rank: int) -> int:
    return 0


PRUNABLE_OPS: dict[Any, OpSpec] = {
    aten.linear.default: OpSpec("linear", 1, _axis1),
    aten.conv1d.default: OpSpec("conv", 1, _axis1, groups_arg=6),
    aten.conv2d.default: OpSpec("conv", 1, _axis1, groups_arg=6),
    aten.conv3d.default: OpSpec("conv", 1, _axis1, groups_arg=6),
    aten.conv1d.padding: OpSpec("conv", 1, _axis1, groups_arg=6),
    aten.conv2d.padding: OpSpec("conv", 1, _axis1, groups_arg=6),
    aten.conv3d.padding: OpSpec("conv", 1, _axis1, groups_arg=6),
    aten.convolution.default: OpSpec("conv", 1, _axis1, groups_arg=8, transposed_arg=6),
    aten.conv_transpose1d.default: OpSpec("conv_transpose", 1, _axis0, groups_arg=6),
    aten.conv_transpose2d.input: OpSpec("conv_transpose", 1, _axis0, groups_arg=6),
    aten.conv_transpose3d.input: OpSpec("conv_transpose", 1, _axis0, groups_arg=6),
    aten.addmm.default: OpSpec("matmul", 2, _second_last),
    aten.mm.default: OpSpec("matmul", 1, _second_last),
    aten.matmul.default: OpSpec("matmul", 1, _second_last),
    # torch.fx (symbolic_trace) spellings
    F.linear: OpSpec("linear", 1, _axis1),
    F.conv1d: OpSpec("conv", 1, _axis1, groups_arg=6),
    F.conv2d: OpSpec("conv", 1, _axis1, groups_arg=6),
    F.conv3d: OpSpec("conv", 1, _axis1, groups_arg=6),
    torch.addmm: OpSpec("matmul", 2, _second_last),
    torch.mm: OpSpec("matmul", 1, _second_last),
    torch.matmul: OpSpec("matmul", 1, _second_last),
    operator.matmul: OpSpec("matmul", 1, _second_last),
}

# Ops through which a weight operand is followed back to its parameter. Value: how axes map.
_IDENTITY_OPS = {
    aten.detach.default,
    aten.alias.default,
    aten.clone.default,
    aten.contiguous.default,
    aten._to_copy.default,
    aten.to.dtype,
    aten.to.dtype_layout,
    aten.lift_fresh_copy.default,
    aten.slice.Tensor,
    aten.narrow.default,
    aten.split.Tensor,
    aten.split_with_sizes.default,
    aten.chunk.default,
    aten.mul.Tensor,  # a mask multiply (masked form) keeps the axes
    operator.getitem,
}
_SWAP_OPS = {aten.t.default, aten.numpy_T.default}


def _resolve_weight(
    node: Any, cap: Capture, gm_attrs: dict[str, str]
) -> tuple[str, list[int]] | None:
    """Follow an operand back to a parameter; return (param fqn, axis map operand->param)."""
    axes: list[int] | None = None  # operand axis j == param axis axes[j]; None = identity so far
    cur = node
    for _ in range(32):
        if not isinstance(cur, fx.Node):
            return None
        if cur.op == "placeholder":
            name = cap.param_of_placeholder.get(cur.name)
            if name is None:
                return None
            rank = _rank(cur)
            if rank is None:
                return None
            return name, axes if axes is not None else list(range(rank))
        if cur.op == "get_attr":
            name = gm_attrs.get(cur.target, cur.target)  # type: ignore[arg-type]
            rank = _rank(cur)
            if rank is None:
                try:
                    rank = cap.module.get_parameter(name).dim()
                except AttributeError:
                    return None
            return name, axes if axes is not None else list(range(rank))
        if cur.op == "call_function":
            t = cur.target
            src = cur.args[0]
            if t in _IDENTITY_OPS:
                if t is aten.mul.Tensor:
                    # follow the operand that is not a mask buffer; masks are buffers, weights params
                    src = cur.args[0]
                cur = src
                continue
            if t in _SWAP_OPS or t is aten.transpose.int or t is aten.permute.default:
                rank = _rank(cur)
                if rank is None:
                    return None
                if t in _SWAP_OPS:
                    perm = [1, 0] if rank == 2 else list(range(rank))
                elif t is aten.transpose.int:
                    d0, d1 = (int(a) % rank for a in cur.args[1:3])  # type: ignore[arg-type]
                    perm = list(range(rank))
                    perm[d0], perm[d1] = perm[d1], perm[d0]
                else:
                    perm = [int(a) % rank for a in cur.args[1]]  # type: ignore[arg-type]
                # out axis j == in axis perm[j]; compose with what we have (out is nearer the op)
                axes = [perm[j] for j in range(rank)] if axes is None else [perm[a] for a in axes]
                cur = src
                continue
            return None
        if cur.op == "call_method" and cur.target in ("t", "contiguous", "to", "float", "half", "detach"):
            if cur.target == "t":
                axes = [1, 0] if axes is None else [[1, 0][a] for a in axes]
            cur = cur.args[0]
            continue
        return None
    return None


def _ties(model: nn.Module) -> dict[str, tuple[str, ...]]:
    by_id: dict[int, list[str]] = defaultdict(list)
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id[id(p)].append(name)
    out: dict[str, tuple[str, ...]] = {}
    for names in by_id.values():
        for n in names:
            out[n] = tuple(x for x in names if x != n)
    return out


def _canonical(model: nn.Module) -> dict[str, str]:
    """Map every alias fqn of a parameter to the first name named_parameters() gives it."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(p), name)
        out[name] = first[id(p)]
    return out


def find_sites(cap: Capture) -> SiteScan:
    """All prunable weights of a captured model, in graph order (module order for the walk)."""
    model = cap.module
    ties = _ties(model)
    canon = _canonical(model)
    if cap.graph is None:
        return _walk_sites(model, ties)

    found: dict[str, Site] = {}
    other_uses: dict[str, list[str]] = defaultdict(list)
    gm_attrs: dict[str, str] = {}
    for node in cap.graph.nodes:
        if node.op == "call_module" and cap.method == "fx":
            _fx_module_site(node, model, found, ties, canon)
            continue
        if node.op != "call_function":
            continue
        spec = PRUNABLE_OPS.get(node.target)
        if spec is None:
            continue
        if spec.weight_arg >= len(node.args):
            continue
        resolved = _resolve_weight(node.args[spec.weight_arg], cap, gm_attrs)
        if resolved is None and spec.kind == "matmul" and spec.weight_arg >= 1:
            # a parameter on the left: W @ x (K is W's last axis)
            left = _resolve_weight(node.args[spec.weight_arg - 1], cap, gm_attrs)
            if left is not None:
                name, axes = left
                _add_site(found, model, ties, canon, node, spec, name, axes, k_operand=len(axes) - 1)
            continue
        if resolved is None:
            continue
        name, axes = resolved
        kind = spec.kind
        if spec.transposed_arg is not None and len(node.args) > spec.transposed_arg and node.args[spec.transposed_arg]:
            kind = "conv_transpose"
            spec = OpSpec("conv_transpose", 1, _axis0, groups_arg=8)
        k_operand = spec.k_of_operand(len(axes))
        _add_site(found, model, ties, canon, node, spec, name, axes, k_operand=k_operand, kind=kind)

    # 2-D+ floating parameters no supported op reads: reported as unsupported
    supported = set(found)
    for node in cap.graph.nodes:
        if node.op == "call_function" and node.target not in PRUNABLE_OPS:
            for a in node.all_input_nodes:
                if a.op == "placeholder" and a.name in cap.param_of_placeholder:
                    other_uses[canon.get(cap.param_of_placeholder[a.name], cap.param_of_placeholder[a.name])].append(
                        getattr(node.target, "__name__", str(node.target))
                    )
    unsupported: list[tuple[str, str]] = []
    for name, p in model.named_parameters():
        if p.dim() < 2 or not p.is_floating_point() or name in supported:
            if name in found and other_uses.get(name):
                found[name].extra["other_uses"] = sorted(set(other_uses[name]))
            continue
        ops = sorted(set(other_uses.get(name, [])))
        # view ops that lead into a prunable op are not "uses" of their own
        if name not in supported:
            unsupported.append((name, ", ".join(ops) if ops else "not read by a GEMM/conv op"))
    return SiteScan(list(found.values()), unsupported)


def _add_site(
    found: dict[str, Site],
    model: nn.Module,
    ties: dict[str, tuple[str, ...]],
    canon: dict[str, str],
    node: fx.Node,
    spec: OpSpec,
    name: str,
    axes: list[int],
    *,
    k_operand: int,
    kind: str | None = None,
) -> None:
    name = canon.get(name, name)
    kind = kind or spec.kind
    try:
        param = model.get_parameter(name)
    except AttributeError:
        return
    k_axis = axes[k_operand] if k_operand < len(axes) else k_operand
    if name in found:
        found[name].uses += 1
        return
    mod = module_of(name)
    try:
        mtype = type(model.get_submodule(mod))
        module_type = f"{mtype.__module__}.{mtype.__qualname__}"
    except AttributeError:
        module_type = ""
    groups = 1
    if spec.groups_arg is not None and len(node.args) > spec.groups_arg:
        g = node.args[spec.groups_arg]
        groups = int(g) if isinstance(g, int) else 1
    shape = tuple(param.shape)
    flops = _flops(node, kind, shape, k_axis)
    found[name] = Site(
        param=name,
        module=mod,
        module_type=module_type,
        op=_op_name(kind, module_type, len(shape)),
        shape=shape,
        k_axis=k_axis,
        groups=groups,
        flops=flops,
        ties=ties.get(name, ()),
        source=_source_line(node),
        node=node.name,
    )
