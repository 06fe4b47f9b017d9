"""Channel-label rules of ops without weights (elementwise, reduction, normalization, pooling,
padding) and their registry ``GENERIC_RULES``, which also holds the view/shape rules of
``_rules_shape``.

Shared helpers for every rule live in ``_rules_base``; the full registry is ``group_rules.RULES``.

``RULES`` maps an ATen op name (the overload packet, e.g. ``"conv2d"``) to a rule
``rule(st, node, args_labels) -> output labels``. ``args_labels`` gives the labels of each tensor
argument (``None`` for non-tensors). An op without a rule blocks every channel group its inputs carry.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

from graphprune.analysis._labels import CL, DL, IL, Label, LabelState, module_stack
from graphprune.analysis._rules_base import Env, Rule, _arg, _args, _norm_dim, _unknown, labels_of, op_name, shape_of
from graphprune.analysis._rules_shape import (
    cat,
    expand,
    index,
    index_select,
    permute,
    reshape,
    select,
    slice_,
    split,
    stack,
)


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
