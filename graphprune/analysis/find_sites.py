"""Find every prunable weight in a captured model (read-only analysis).

Input: a :class:`~graphprune.capture.Capture`. Output: a list of :class:`Site` (one per weight
tensor, keyed by its parameter fqn) plus the 2-D+ floating parameters that no supported op reads
(``unsupported``: they get a Decision too, so nothing is skipped silently).

Graph captures (torch.export aten graphs and fx graphs) are read op by op through the registry
``PRUNABLE_OPS``; the weight operand is followed back through view-like ops (t, transpose,
permute, dtype casts, detach, contiguous, slicing) to the parameter, and the reduction axis K of the
op is mapped back to the parameter's own axes. The module walk (no graph) knows only whitelisted
module types (``WALK_TYPES``).
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

from graphprune.analysis.sites import Site
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

WALK_TYPES: tuple[str, ...] = (
    "Linear",
    "LazyLinear",
    "NonDynamicallyQuantizableLinear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Conv1D",  # transformers GPT-2
)


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
                    d0, d1 = (int(a) % rank for a in cur.args[1:3])  # type: ignore[arg-type, call-overload]
                    perm = list(range(rank))
                    perm[d0], perm[d1] = perm[d1], perm[d0]
                else:
                    perm = [int(a) % rank for a in cur.args[1]]  # type: ignore[arg-type, union-attr, call-overload]
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


@dataclass
class SiteScan:
    sites: list[Site]
    unsupported: list[tuple[str, str]]  # (param fqn, why)


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


def _fx_module_site(
    node: fx.Node,
    model: nn.Module,
    found: dict[str, Site],
    ties: dict[str, tuple[str, ...]],
    canon: dict[str, str],
) -> None:
    target = str(node.target)
    try:
        mod = model.get_submodule(target)
    except AttributeError:
        return
    if type(mod).__name__ == "MultiheadAttention" and getattr(mod, "in_proj_weight", None) is not None:
        infos = [("in_proj_weight", "linear", 1, 1), ("out_proj.weight", "linear", 1, 1)]
    else:
        info = _module_weight_info(mod)
        infos = [info] if info is not None else []
    for pname, kind, k_axis, groups in infos:
        _fx_add(node, model, found, ties, canon, target, mod, pname, kind, k_axis, groups)


def _fx_add(
    node: fx.Node,
    model: nn.Module,
    found: dict[str, Site],
    ties: dict[str, tuple[str, ...]],
    canon: dict[str, str],
    target: str,
    mod: nn.Module,
    pname: str,
    kind: str,
    k_axis: int,
    groups: int,
) -> None:
    name = canon.get(f"{target}.{pname}", f"{target}.{pname}")
    if name in found:
        found[name].uses += 1
        return
    param = model.get_parameter(name)
    shape = tuple(param.shape)
    mtype = type(mod)
    module_type = f"{mtype.__module__}.{mtype.__qualname__}"
    op = "mha_in_proj" if pname == "in_proj_weight" else _op_name(kind, "", len(shape))
    found[name] = Site(
        param=name,
        module=module_of(name),
        module_type=module_type,
        op=op,
        shape=shape,
        k_axis=k_axis,
        groups=groups,
        flops=0 if module_type.endswith("MultiheadAttention") else _flops(node, kind, shape, k_axis),
        ties=ties.get(name, ()),
        source=_source_line(node),
        node=node.name,
    )


def _module_weight_info(mod: nn.Module) -> tuple[str, str, int, int] | None:
    """(param name, kind, K axis, groups) for whitelisted module types."""
    cls = getattr(mod, "original_name", None) or type(mod).__name__  # TorchScript keeps the class name here
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor):
        return None
    if isinstance(mod, nn.Linear) or cls in ("Linear", "NonDynamicallyQuantizableLinear", "LazyLinear"):
        return "weight", "linear", 1, 1
    if isinstance(mod, nn.modules.conv._ConvNd) or cls in ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"):
        transposed = bool(getattr(mod, "transposed", cls.startswith("ConvTranspose")))
        groups = int(getattr(mod, "groups", 1))
        return ("weight", "conv_transpose", 0, groups) if transposed else ("weight", "conv", 1, groups)
    if cls == "Conv1D" and hasattr(mod, "nf"):
        return "weight", "matmul", 0, 1
    return None


def _walk_sites(model: nn.Module, ties: dict[str, tuple[str, ...]]) -> SiteScan:
    sites: list[Site] = []
    seen: set[int] = set()
    covered: set[str] = set()
    for mname, mod in model.named_modules():
        infos: list[tuple[str, str, int, int]] = []
        info = _module_weight_info(mod)
        if info is not None:
            infos.append(info)
        if type(mod).__name__ == "MultiheadAttention" and getattr(mod, "in_proj_weight", None) is not None:
            infos.append(("in_proj_weight", "linear", 1, 1))
        for pname, kind, k_axis, groups in infos:
            p = getattr(mod, pname)
            name = f"{mname}.{pname}" if mname else pname
            if id(p) in seen:
                continue
            seen.add(id(p))
            covered.add(name)
            mtype = type(mod)
            original = getattr(mod, "original_name", None)  # TorchScript keeps the class name here
            module_type = f"{mtype.__module__}.{original or mtype.__qualname__}"
            shape = tuple(p.shape)
            op = _op_name(kind, module_type if original is None else f".{original}", len(shape))
            if type(mod).__name__ == "MultiheadAttention":
                op = "mha_in_proj"
            sites.append(
                Site(
                    param=name,
                    module=mname,
                    module_type=module_type,
                    op=op,
                    shape=shape,
                    k_axis=k_axis,
                    groups=groups,
                    flops=0,
                    ties=ties.get(name, ()),
                )
            )
    unsupported = [
        (n, "module type not in the walk whitelist")
        for n, p in model.named_parameters()
        if p.dim() >= 2 and p.is_floating_point() and n not in covered
    ]
    return SiteScan(sites, unsupported)
