"""Channel-label rules of view and shape ops: permute/transpose, reshape/view/flatten, expand,
slice, split, cat, stack, select, index_select, index.

Part of the generic registry (``_rules_generic.GENERIC_RULES``). Each rule moves the labels of its
input's axes to the output's axes; where an op cuts, joins or picks along a channel axis it refines
the coupled space into pieces (a slice or split of a whole space, a concatenation of whole spaces)
or blocks the group (anything else).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

from graphprune.analysis._labels import CL, DL, IL, Label, LabelState, TLabels, reshape_labels
from graphprune.analysis._rules_base import Env, _arg, _args, _norm_dim, _unknown, labels_of, op_name, shape_of


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
