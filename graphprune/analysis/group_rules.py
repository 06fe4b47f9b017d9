"""Registry of channel-label rules (``RULES``: ATen op name -> rule) for coupled-group analysis.

A rule is ``rule(state, node, env) -> labels of the output(s)`` (see ``_labels`` for the label
model). Rules of ops without weights live in ``_rules_generic``; the ops that carry weights are here:
linear, addmm, (batched) matmul, attention, conv, embedding. Each couples its input channel axis
with the weight's input axis and makes the weight's output axis the output's channel axis (a
*producer*). An op without a rule blocks every channel group its inputs carry.
"""

from __future__ import annotations

from typing import Any

import torch.fx

from graphprune.analysis._labels import DL, Label, LabelState, Producer, TLabels
from graphprune.analysis._rules_base import (
    Env,
    Rule,
    _arg,
    _args,
    _is_param,
    _module,
    _unknown,
    labels_of,
    op_name,
    shape_of,
)
from graphprune.analysis._rules_generic import GENERIC_RULES


def _weight_labels(st: LabelState, env: Env, w: Any) -> TLabels | None:
    return labels_of(env, w) if _is_param(st, w) else None


def linear(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    x, w = _args(node)[0], _args(node)[1]
    b = _arg(node, 2, "bias", None)
    xl, wl = labels_of(env, x), _weight_labels(st, env, w)
    xs, ws = shape_of(x), shape_of(w)
    if wl is None or xs is None or ws is None:
        return _unknown(st, node, env)
    if xl is not None:
        st.couple(xl[-1], wl[1], xs[-1], node)
    st.producers.append(Producer(_space(wl[0]), "linear", _module(node), node.name, len(xs) - 1))
    bl = labels_of(env, b)
    if bl is not None:
        st.couple(wl[0], bl[0], ws[0], node)
    return (*(xl[:-1] if xl is not None else (None,) * (len(xs) - 1)), wl[0])


def _space(lab: Label) -> int:
    assert isinstance(lab, DL)
    return lab.space


def addmm(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    b, x, w = _args(node)[0], _args(node)[1], _args(node)[2]
    xl, wl = labels_of(env, x), _weight_labels(st, env, w)
    xs, ws = shape_of(x), shape_of(w)
    if wl is None or xs is None or ws is None:
        return _unknown(st, node, env)
    if xl is not None:
        st.couple(xl[-1], wl[0], xs[-1], node)
    st.producers.append(Producer(_space(wl[1]), "addmm", _module(node), node.name, 1))
    bl = labels_of(env, b)
    bs = shape_of(b)
    if bl is not None and bs is not None and bs[-1] == ws[1]:
        st.couple(wl[1], bl[-1], ws[1], node)
    return ((xl[0] if xl is not None else None), wl[1])


def matmul(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    a, b = _args(node)[0], _args(node)[1]
    al, bl = labels_of(env, a), labels_of(env, b)
    as_, bs, os_ = shape_of(a), shape_of(b), shape_of(node)
    if as_ is None or bs is None or os_ is None or len(as_) < 2 or len(bs) < 2:
        return _unknown(st, node, env)
    al = al if al is not None else (None,) * len(as_)
    bl = bl if bl is not None else (None,) * len(bs)
    st.couple(al[-1], bl[-2], as_[-1], node, why="contracted with a tensor that has no prunable channels")
    both_acts = not _is_param(st, a) and not _is_param(st, b)
    nb = len(os_) - 2
    batch: list[Label] = []
    for k in range(nb):
        ka, kb = k - (nb - (len(as_) - 2)), k - (nb - (len(bs) - 2))
        la = al[ka] if ka >= 0 and as_[ka] != 1 else None
        lb = bl[kb] if kb >= 0 and bs[kb] != 1 else None
        if la is not None and lb is not None:
            st.couple(la, lb, os_[k], node)
            if both_acts:
                for s in st.label_spaces(la):
                    st.attention.add(st.find(s))
        elif (la is None) != (lb is None):
            other_present = (ka >= 0 and as_[ka] != 1) if la is None else (kb >= 0 and bs[kb] != 1)
            if other_present:
                st.couple(la, lb, os_[k], node)
        batch.append(la if la is not None else lb)
    if _is_param(st, b) and isinstance(bl[-1], DL):
        st.producers.append(Producer(bl[-1].space, "matmul", _module(node), node.name, len(os_) - 1))
    return (*batch, al[-2], bl[-1])


def sdpa(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    q, k, v = _args(node)[0], _args(node)[1], _args(node)[2]
    ql, kl, vl = labels_of(env, q), labels_of(env, k), labels_of(env, v)
    qs, ks, vs = shape_of(q), shape_of(k), shape_of(v)
    if qs is None or ks is None or vs is None or len(qs) != 4:
        return _unknown(st, node, env)
    ql = ql or (None,) * 4
    kl = kl or (None,) * 4
    vl = vl or (None,) * 4
    h, hk = qs[1], ks[1]
    rep = h // hk if hk and h % hk == 0 else 1

    def repeated(lab: Label) -> Label:
        if isinstance(lab, DL) and rep > 1:
            return DL(lab.space, lab.block, lab.rep * rep)
        return lab

    st.couple(ql[1], repeated(kl[1]), h, node)
    st.couple(repeated(kl[1]), repeated(vl[1]), h, node)
    st.couple(ql[3], kl[3], qs[3], node)
    mask = _arg(node, 3, "attn_mask", None)
    ms = shape_of(mask)
    if ms is not None and len(ms) == 4 and ms[1] != 1:
        st.couple(ql[1], None, h, node)
    for lab in (ql[1], kl[1], vl[1]):
        for s in st.label_spaces(lab):
            st.attention.add(st.find(s))
    return (ql[0], ql[1], ql[2], vl[3])


def _conv_groups(node: torch.fx.Node) -> tuple[int, bool]:
    name = op_name(node.target)
    if name in ("convolution", "_convolution"):
        return int(_args(node)[8]), bool(_args(node)[6])
    if name.startswith("conv_transpose"):
        return int(_arg(node, 6, "groups", 1)), True
    return int(_arg(node, 6, "groups", 1)), False


def conv(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    x, w = _args(node)[0], _args(node)[1]
    b = _arg(node, 2, "bias", None)
    xl, wl = labels_of(env, x), _weight_labels(st, env, w)
    xs, ws, os_ = shape_of(x), shape_of(w), shape_of(node)
    if wl is None or xs is None or ws is None or os_ is None:
        return _unknown(st, node, env)
    groups, transposed = _conv_groups(node)
    xl = xl or (None,) * len(xs)
    c_in = xs[1]
    out_axis = 1 if transposed else 0
    in_axis = 0 if transposed else 1
    out_label = wl[out_axis]
    if groups == 1:
        st.couple(xl[1], wl[in_axis], c_in, node)
        st.producers.append(Producer(_space(out_label), "conv_transpose" if transposed else "conv", _module(node), node.name, 1))
    elif groups == c_in and not transposed and ws[1] == 1:
        st.couple(xl[1], wl[0], c_in, node)  # depthwise: output channel o reads input channel o // multiplier
        out_label = DL(_space(wl[0]), 1, 1)
    else:
        st.block(xl[1], f"grouped convolution (groups={groups}) couples channels inside each group", node)
        st.block(out_label, f"grouped convolution (groups={groups}) couples channels inside each group", node)
        st.producers.append(Producer(_space(out_label), "conv", _module(node), node.name, 1))
    bl = labels_of(env, b)
    if bl is not None:
        st.couple(out_label, bl[0], os_[1], node)
    return (xl[0], out_label, *((None,) * (len(os_) - 2)))


def embedding(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    w, ids = _args(node)[0], _args(node)[1]
    wl = _weight_labels(st, env, w)
    ids_s = shape_of(ids)
    if wl is None or ids_s is None:
        return _unknown(st, node, env)
    st.producers.append(Producer(_space(wl[1]), "embedding", _module(node), node.name, len(ids_s)))
    return (*((None,) * len(ids_s)), wl[1])



RULES: dict[str, Rule] = {
    **GENERIC_RULES,
    "linear": linear,
    "addmm": addmm,
    "mm": matmul,
    "bmm": matmul,
    "matmul": matmul,
    "scaled_dot_product_attention": sdpa,
    "conv1d": conv,
    "conv2d": conv,
    "conv3d": conv,
    "convolution": conv,
    "_convolution": conv,
    "conv_transpose1d": conv,
    "conv_transpose2d": conv,
    "conv_transpose3d": conv,
    "embedding": embedding,
}


def apply_rule(st: LabelState, node: torch.fx.Node, env: Env) -> Any:
    """Labels of ``node``'s output(s); an op without a rule blocks the channel groups it reads."""
    rule = RULES.get(op_name(node.target))
    if rule is None:
        return _unknown(st, node, env)
    return rule(st, node, env)


__all__ = ["RULES", "apply_rule", "op_name", "shape_of"]
