"""Channel-label rules of ops without weights (elementwise, shape, reduction, normalization, pooling).

Shared helpers for every rule live here too; the registry is ``group_rules.RULES``.

``RULES`` maps an ATen op name (the overload packet, e.g. ``"conv2d"``) to a rule
``rule(st, node, args_labels) -> output labels``. ``args_labels`` gives the labels of each tensor
argument (``None`` for non-tensors). An op without a rule blocks every channel group its inputs carry.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx

from graphprune.analysis._labels import CL, DL, IL, Label, LabelState, TLabels, module_stack, reshape_labels

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


# ---- generic rules -----------------------------------------------------------------------------
def unary(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    return labels_of(env, _args(node)[0]) if _args(node) else None


def broadcast(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    out_shape = shape_of(node)
    if out_shape is None:
        return _unknown(st, node, env)
    rank = len(out_shape)
    ops = [a for a in _args(node) if isinstance(a, torch.fx.Node) and shape_of(a) is not None]
    out: list[Label] = [None] * rank
    for d in range(rank):
        labs: list[Label] = []
        unlabeled = False
        for a in ops:
            sh = shape_of(a)
            assert sh is not None
            k = d - (rank - len(sh))
            if k < 0 or sh[k] == 1:
                continue
            la = labels_of(env, a)
            lab = la[k] if la is not None else None
            if lab is None:
                unlabeled = True
            else:
                labs.append(lab)
        if not labs:
            continue
        first = next((x for x in labs if not isinstance(x, IL)), labs[0])
        for other in labs:
            if other is not first:
                st.couple(first, other, out_shape[d], node)
        if unlabeled:
            st.couple(first, None, out_shape[d], node)
        out[d] = first
    return tuple(out)


def _unknown(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    for a in node.all_input_nodes:
        st.block_all(env.get(a), f"unsupported op {node.target}", node)
    return None


def _norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _rms_norm_module(node: torch.fx.Node, dims: set[int], rank: int, keep: bool) -> str | None:
    """The fqn of the RMSNorm module whose mean of squares over the last axis ``node`` is (else None).

    Only this reduction may run over channels that are later removed: the shrunk model's RMS over
    the kept channels differs from the masked model's by the constant factor sqrt(n / n_kept), which
    the rewrite folds into the norm's weight and eps (``structured.rescale_rms_norms``).
    """
    if op_name(node.target) != "mean" or dims != {rank - 1} or not keep:
        return None
    stack = module_stack(node)
    if not stack or not stack[-1][1].rsplit(".", 1)[-1].endswith("RMSNorm"):
        return None
    src = _args(node)[0]
    if not (isinstance(src, torch.fx.Node) and op_name(src.target) == "pow" and len(src.args) > 1 and src.args[1] == 2):
        return None
    return stack[-1][0]


def reduction(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    if getattr(node.target, "_overloadname", "") == "other":  # torch.max(a, b): elementwise
        return broadcast(st, node, env)
    x = _args(node)[0]
    labs = labels_of(env, x)
    sh = shape_of(x)
    if labs is None or sh is None:
        return None
    dims = _arg(node, 1, "dim", None)
    if dims is None or (op_name(node.target) in ("mean", "sum") and len(_args(node)) < 2 and "dim" not in node.kwargs):
        dims = list(range(len(sh)))
    if isinstance(dims, int):
        dims = [dims]
    dims = {_norm_dim(d, len(sh)) for d in dims}
    keep = bool(_arg(node, 2, "keepdim", False))
    rms = _rms_norm_module(node, dims, len(sh), keep)
    out: list[Label] = []
    for d, lab in enumerate(labs):
        if d in dims:
            if rms is not None and isinstance(lab, DL) and lab.block == 1 and lab.rep == 1:
                st.rms_norms.append((lab.space, rms, node.name))
            elif isinstance(lab, (DL, CL)):
                st.block(lab, f"{op_name(node.target)} reduces over these channels", node)
            if keep:
                out.append(None)
        else:
            out.append(lab)
    res = tuple(out)
    return [res, res] if isinstance(node.meta.get("val"), (tuple, list)) else res


def softmax(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    labs = labels_of(env, _args(node)[0])
    if labs is None:
        return None
    d = _norm_dim(int(_arg(node, 1, "dim", -1)), len(labs))
    if isinstance(labs[d], (DL, CL)):
        st.block(labs[d], f"{op_name(node.target)} normalizes over these channels", node)
    return labs


def layer_norm(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    x = _args(node)[0]
    labs = labels_of(env, x)
    if labs is None:
        return None
    shape = _arg(node, 1, "normalized_shape", None)
    k = len(shape) if isinstance(shape, (list, tuple)) else 1
    name = op_name(node.target)
    for lab in labs[len(labs) - k :]:
        if isinstance(lab, (DL, CL)):
            st.block(lab, f"{name} normalizes over these channels (a residual stream stays dense)", node)
            st.layer_norms.extend(st.label_spaces(lab))
    res = tuple(labs)
    return [res, None, None] if name.startswith("native_") else res


def group_norm(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    labs = labels_of(env, _args(node)[0])
    if labs is None:
        return None
    st.block_all(labs[1:2], "group_norm normalizes over channel groups", node)
    return [labs, None, None] if op_name(node.target).startswith("native_") else labs


def batch_norm(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    x = _args(node)[0]
    labs = labels_of(env, x)
    sh = shape_of(x)
    if labs is None or sh is None:
        return None
    for a in _args(node)[1:5]:
        la = labels_of(env, a)
        if la is not None and len(la) == 1:
            st.couple(labs[1], la[0], sh[1], node)
    if op_name(node.target) == "batch_norm":
        return labs
    return [labs, None, None, None, None]


def permute(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    labs = labels_of(env, _args(node)[0])
    if labs is None:
        return None
    rank = len(labs)
    name = op_name(node.target)
    if name == "permute":
        order = [_norm_dim(int(d), rank) for d in _args(node)[1]]
    else:
        order = list(range(rank))
        if name in ("t", "numpy_T") or rank < 2:
            if rank == 2:
                order = [1, 0]
        else:
            a, b = _norm_dim(int(_args(node)[1]), rank), _norm_dim(int(_args(node)[2]), rank)
            order[a], order[b] = order[b], order[a]
    return tuple(labs[o] for o in order)


def reshape(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    x = _args(node)[0]
    labs = labels_of(env, x)
    in_sh, out_sh = shape_of(x), shape_of(node)
    if labs is None:
        return None
    if in_sh is None or out_sh is None:
        return _unknown(st, node, env)
    return reshape_labels(st, labs, in_sh, out_sh, node)


def expand(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    x = _args(node)[0]
    labs = labels_of(env, x)
    in_sh, out_sh = shape_of(x), shape_of(node)
    if labs is None or in_sh is None or out_sh is None:
        return None
    off = len(out_sh) - len(in_sh)
    out: list[Label] = [None] * off
    for d, lab in enumerate(labs):
        out.append(lab if in_sh[d] == out_sh[d + off] else None)
    return tuple(out)


def slice_(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    x = _args(node)[0]
    labs = labels_of(env, x)
    in_sh, out_sh = shape_of(x), shape_of(node)
    if labs is None or in_sh is None or out_sh is None:
        return None
    d = _norm_dim(int(_arg(node, 1, "dim", 0)), len(labs))
    lab = st.resolve(labs[d], node)
    out = list(labs)
    if in_sh[d] == out_sh[d] or lab is None or isinstance(lab, IL):
        out[d] = lab
        return tuple(out)
    start = _arg(node, 2, "start", 0) or 0
    step = _arg(node, 4, "step", 1) or 1
    start = start + in_sh[d] if start < 0 else min(start, in_sh[d])
    length = out_sh[d]
    if isinstance(lab, DL) and lab.block == 1 and lab.rep == 1 and step == 1:
        sizes = [s for s in (start, length, in_sh[d] - start - length) if s]
        pieces = st.refine(lab.space, sizes, node)
        if pieces is not None:
            out[d] = DL(pieces[1 if start else 0])
            return tuple(out)
    st.block(lab, "a slice of a channel axis", node)
    out[d] = None
    return tuple(out)


def split(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    x = _args(node)[0]
    labs = labels_of(env, x)
    sh = shape_of(x)
    vals = node.meta.get("val")
    if labs is None or sh is None or not isinstance(vals, (list, tuple)):
        return None
    d = _norm_dim(int(_arg(node, 2, "dim", 0)), len(labs))
    sizes = [int(v.shape[d]) for v in vals]
    lab = st.resolve(labs[d], node)
    outs: list[TLabels] = []
    piece_labels: list[Label]
    if lab is None or isinstance(lab, IL):
        piece_labels = [lab] * len(sizes)
    elif isinstance(lab, DL) and lab.block == 1 and lab.rep == 1:
        pieces = st.refine(lab.space, sizes, node)
        if pieces is None:
            st.block(lab, "a split of a coupled channel axis", node)
            piece_labels = [None] * len(sizes)
        else:
            piece_labels = [DL(p) for p in pieces]
    elif isinstance(lab, CL) and list(lab.sizes) == sizes:
        piece_labels = list(lab.parts)
    else:
        st.block(lab, "a split of a channel axis at other offsets", node)
        piece_labels = [None] * len(sizes)
    for pl in piece_labels:
        o = list(labs)
        o[d] = pl
        outs.append(tuple(o))
    return outs


def cat(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    tensors = [t for t in _args(node)[0] if isinstance(t, torch.fx.Node)]
    out_sh = shape_of(node)
    if out_sh is None:
        return _unknown(st, node, env)
    rank = len(out_sh)
    d = _norm_dim(int(_arg(node, 1, "dim", 0)), rank)
    parts = [(labels_of(env, t), shape_of(t)) for t in tensors]
    parts = [(la, sh) for la, sh in parts if sh is not None and len(sh) == rank]
    out: list[Label] = [None] * rank
    for k in range(rank):
        if k == d:
            continue
        labs = [la[k] if la is not None else None for la, _ in parts]
        first = next((x for x in labs if x is not None), None)
        if first is None:
            continue
        for other in labs:
            if other is not first:
                st.couple(first, other, out_sh[k], node)
        out[k] = first
    cat_labels = [st.resolve(la[d], node) if la is not None else None for la, _ in parts]
    if all(x is None for x in cat_labels):
        return tuple(out)
    if all(isinstance(x, IL) for x in cat_labels):
        out[d] = cat_labels[0]
        return tuple(out)
    flat_parts: list[DL | None] = []
    sizes: list[int] = []
    for lab, (_, sh) in zip(cat_labels, parts):
        assert sh is not None
        if lab is None or (isinstance(lab, DL) and lab.block == 1):
            flat_parts.append(lab)
            sizes.append(sh[d])
        elif isinstance(lab, CL):
            flat_parts.extend(lab.parts)
            sizes.extend(lab.sizes)
        else:
            st.block(lab, "a concatenation of head-structured axes", node)
            flat_parts.append(None)
            sizes.append(sh[d])
    out[d] = CL(tuple(flat_parts), tuple(sizes))
    return tuple(out)


def stack(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    tensors = [t for t in _args(node)[0] if isinstance(t, torch.fx.Node)]
    out_sh = shape_of(node)
    if out_sh is None:
        return _unknown(st, node, env)
    d = _norm_dim(int(_arg(node, 1, "dim", 0)), len(out_sh))
    base = [labels_of(env, t) for t in tensors]
    rank_in = len(out_sh) - 1
    out_in: list[Label] = [None] * rank_in
    for k in range(rank_in):
        labs = [la[k] if la is not None else None for la in base]
        first = next((x for x in labs if x is not None), None)
        for other in labs:
            if first is not None and other is not first:
                st.couple(first, other, out_sh[k + (1 if k >= d else 0)], node)
        out_in[k] = first
    return (*out_in[:d], None, *out_in[d:])


def select(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    labs = labels_of(env, _args(node)[0])
    if labs is None:
        return None
    d = _norm_dim(int(_args(node)[1]), len(labs))
    if isinstance(labs[d], (DL, CL)):
        st.block(labs[d], "select picks one channel", node)
    return tuple(lab for k, lab in enumerate(labs) if k != d)


def spatial(k: int) -> Rule:
    """Pooling / upsampling over the last ``k`` dims: channels pass, spatial dims must carry no channels."""

    def rule(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
        labs = labels_of(env, _args(node)[0])
        if labs is None:
            return None
        for lab in labs[len(labs) - k :]:
            if isinstance(lab, (DL, CL)):
                st.block(lab, f"{op_name(node.target)} mixes positions along a channel axis", node)
        res = tuple(labs[: len(labs) - k]) + (None,) * k
        return [res, None] if op_name(node.target).endswith("with_indices") else res

    return rule


def pad(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    labs = labels_of(env, _args(node)[0])
    if labs is None:
        return None
    padding = list(_args(node)[1])
    k = len(padding) // 2
    rank = len(labs)
    for i in range(k):
        d = rank - 1 - i
        if (padding[2 * i] or padding[2 * i + 1]) and isinstance(labs[d], (DL, CL)):
            st.block(labs[d], "padding of a channel axis", node)
    return tuple(lab if k == 0 or d < rank - k else None for d, lab in enumerate(labs))


def getitem(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    lab = env.get(_args(node)[0])
    idx = _args(node)[1]
    if isinstance(lab, list) and isinstance(idx, int) and -len(lab) <= idx < len(lab):
        return lab[idx]
    return None


def no_data(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    return None


def index_select(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    labs = labels_of(env, _args(node)[0])
    if labs is None:
        return None
    d = _norm_dim(int(_args(node)[1]), len(labs))
    if isinstance(labs[d], (DL, CL)):
        st.block(labs[d], "index_select on a channel axis", node)
    out = list(labs)
    out[d] = None
    return tuple(out)


def index(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    """``x[idx]`` with one index tensor on dim 0 (a table lookup): the other dims keep their channels."""
    labs = labels_of(env, _args(node)[0])
    indices = _args(node)[1]
    out_sh = shape_of(node)
    if labs is None:
        return None
    if out_sh is None or not indices or any(i is not None for i in indices[1:]) or not isinstance(indices[0], torch.fx.Node):
        return _unknown(st, node, env)
    if isinstance(labs[0], (DL, CL)):
        st.block(labs[0], "indexing along a channel axis", node)
    lead = len(out_sh) - (len(labs) - 1)
    return (*((None,) * lead), *labs[1:])


_UNARY = (
    "relu relu_ gelu gelu_ silu silu_ tanh tanh_ sigmoid sigmoid_ neg abs exp log sqrt rsqrt pow erf sin cos "
    "hardtanh hardtanh_ hardswish hardswish_ hardsigmoid hardsigmoid_ leaky_relu leaky_relu_ elu elu_ relu6 "
    "mish softplus clamp clamp_ clamp_min clamp_max dropout dropout_ feature_dropout alpha_dropout clone contiguous "
    "alias detach detach_ to _to_copy type_as lift_fresh_copy reciprocal square sign logical_not bitwise_not "
    "eq ne lt le gt ge isnan isinf nan_to_num fill zero_ _assert_tensor_metadata"
)
_BINARY = "add add_ sub sub_ mul mul_ div div_ rsub where maximum minimum masked_fill masked_fill_ logical_and logical_or __and__ __or__ bitwise_and bitwise_or copy_ pow_ lerp addcmul addcdiv"
_NO_DATA = "arange full zeros ones empty scalar_tensor zeros_like ones_like full_like empty_like new_ones new_zeros new_full new_empty randn rand sym_size sym_numel _local_scalar_dense"

GENERIC_RULES: dict[str, Rule] = {
    **{n: unary for n in _UNARY.split()},
    **{n: broadcast for n in _BINARY.split()},
    **{n: no_data for n in _NO_DATA.split()},
    "native_dropout": lambda st, node, env: [unary(st, node, env), None],
    "mean": reduction,
    "sum": reduction,
    "amax": reduction,
    "amin": reduction,
    "var": reduction,
    "std": reduction,
    "max": reduction,
    "min": reduction,
    "logsumexp": reduction,
    "norm": reduction,
    "linalg_vector_norm": reduction,
    "prod": reduction,
    "all": reduction,
    "any": reduction,
    "softmax": softmax,
    "_softmax": softmax,
    "log_softmax": softmax,
    "_log_softmax": softmax,
    "_safe_softmax": softmax,
    "cumsum": softmax,
    "layer_norm": layer_norm,
    "native_layer_norm": layer_norm,
    "rms_norm": layer_norm,
    "group_norm": group_norm,
    "native_group_norm": group_norm,
    "batch_norm": batch_norm,
    "_native_batch_norm_legit_no_training": batch_norm,
    "_native_batch_norm_legit": batch_norm,
    "_native_batch_norm_legit_functional": batch_norm,
    "native_batch_norm": batch_norm,
    "permute": permute,
    "transpose": permute,
    "t": permute,
    "numpy_T": permute,
    "view": reshape,
    "reshape": reshape,
    "_unsafe_view": reshape,
    "flatten": reshape,
    "unflatten": reshape,
    "squeeze": reshape,
    "squeeze_": reshape,
    "unsqueeze": reshape,
    "unsqueeze_": reshape,
    "view_as": reshape,
    "reshape_as": reshape,
    "expand": expand,
    "expand_as": expand,
    "slice": slice_,
    "narrow": lambda st, node, env: _unknown(st, node, env),
    "split": split,
    "split_with_sizes": split,
    "cat": cat,
    "concat": cat,
    "stack": stack,
    "select": select,
    "index_select": index_select,
    "index": index,
    "max_pool1d": spatial(1),
    "avg_pool1d": spatial(1),
    "adaptive_avg_pool1d": spatial(1),
    "max_pool2d": spatial(2),
    "max_pool2d_with_indices": spatial(2),
    "avg_pool2d": spatial(2),
    "adaptive_avg_pool2d": spatial(2),
    "_adaptive_avg_pool2d": spatial(2),
    "adaptive_max_pool2d": spatial(2),
    "max_pool3d": spatial(3),
    "avg_pool3d": spatial(3),
    "adaptive_avg_pool3d": spatial(3),
    "upsample_nearest2d": spatial(2),
    "upsample_bilinear2d": spatial(2),
    "upsample_bicubic2d": spatial(2),
    "_upsample_nearest_exact2d": spatial(2),
    "constant_pad_nd": pad,
    "pad": pad,
    "reflection_pad2d": pad,
    "replicate_pad2d": pad,
    "getitem": getitem,
}


__all__ = ["GENERIC_RULES", "Env", "Rule", "labels_of", "op_name", "shape_of"]
