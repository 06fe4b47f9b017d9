"""Channel labels and the union-find behind coupled-group analysis (read-only; no rewriting here).

Model
-----
Every *space* is a contiguous range ``[offset, offset + size)`` of one axis of one parameter or
buffer. At the start each axis of each parameter/buffer is one space. A tensor flowing through the
graph carries, per dimension, a *label* saying which space that dimension indexes:

``DL(space, block, rep)``  index ``i`` reads the channels of block ``i // rep`` of ``space``, a block
                           being ``block`` consecutive channels. ``DL(s, 1, 1)`` is a plain channel
                           dimension; ``DL(s, 1, H*W)`` a flattened conv output (each channel spans
                           H*W features); ``DL(q, D, 1)`` the heads dimension after ``view(B, S, H, D)``;
                           ``DL(k, D, n_rep)`` the KV-heads dimension of a GQA key repeated n_rep times.
``IL(space, block)``       the position inside a block (the head_dim of attention). Never sliced.
``CL(parts, sizes)``       a concatenation of ``DL(s, 1, rep)`` / ``None`` parts (torch.cat offsets).

Ops *couple* labels (an elementwise add of two channel dims, a conv reading its input channels,
a matmul contracting two channel dims); coupled spaces are merged in a union-find. A group of
spaces is cut into ``N`` *units* (the removable pieces: one channel, one head, one KV group): unit
``u`` of a member of size ``C`` is its range ``[u*C/N, (u+1)*C/N)``. Coupling two labels over a
dimension of length ``n`` aligns ``n / lcm(rep1, rep2)`` atoms, so ``N = gcd(N1, N2, atoms)``; a
heads split ``C -> (H, D)`` forces ``N | H``. An op that reads channels in a way no slicing can
preserve (a reduction or normalization over them, an unknown op, the model output) *blocks* the
group: it stays dense, and the reason names the node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch.fx


@dataclass(frozen=True)
class DL:
    space: int
    block: int = 1
    rep: int = 1


@dataclass(frozen=True)
class IL:
    space: int
    block: int


@dataclass(frozen=True)
class CL:
    parts: tuple[DL | None, ...]
    sizes: tuple[int, ...]


Label = DL | IL | CL | None
TLabels = tuple[Label, ...]  # one label per tensor dimension


@dataclass
class Space:
    id: int
    target: str  # parameter / buffer fqn
    kind: str  # "parameter" | "buffer"
    axis: int
    offset: int
    size: int
    children: list[int] = field(default_factory=list)


@dataclass
class Blocker:
    reason: str
    node: str
    source: str | None = None


@dataclass
class Producer:
    """A space that an op writes as its output channels (weight rows of a linear / conv, ...)."""

    space: int
    op: str  # linear, addmm, matmul, conv, conv_transpose, embedding
    module: str  # module fqn from nn_module_stack ("" when unknown)
    node: str
    channel_dim: int  # output dim of the op that carries the channels


@dataclass
class HeadSplit:
    space: int
    heads: int
    head_dim: int
    node: str
    module_stack: tuple[tuple[str, str], ...]  # (fqn, type name), outermost first
    source: str | None = None


def node_source(node: torch.fx.Node) -> str | None:
    trace = node.meta.get("stack_trace")
    if not trace:
        return None
    lines = [ln.strip() for ln in str(trace).strip().splitlines() if ln.strip()]
    frames = [ln for ln in lines if ln.startswith("File ")]
    if not frames:
        return lines[-1] if lines else None
    last = frames[-1]
    idx = lines.index(last)
    code = lines[idx + 1] if idx + 1 < len(lines) and not lines[idx + 1].startswith("File ") else ""
    return f"{last}: {code}" if code else last


def module_stack(node: torch.fx.Node) -> tuple[tuple[str, str], ...]:
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for value in stack.values():
        fqn, typ = value[0], value[1]
        name = typ if isinstance(typ, str) else f"{getattr(typ, '__module__', '')}.{getattr(typ, '__qualname__', typ)}"
        out.append((_clean_fqn(str(fqn)), name))
    return tuple(out)


def _clean_fqn(fqn: str) -> str:
    # nn_module_stack fqns look like "L['self'].layer1.0" under strict export; non-strict gives "layer1.0"
    if fqn.startswith("L['self']"):
        fqn = fqn[len("L['self']") :].lstrip(".")
    return fqn


class LabelState:
    """Union-find over spaces plus the per-group facts (units, blockers, producers, head splits)."""

    def __init__(self) -> None:
        self.spaces: list[Space] = []
        self.parent: list[int] = []
        self.units: dict[int, int] = {}  # root -> N
        self.blockers: dict[int, list[Blocker]] = {}
        self.attention: set[int] = set()  # roots whose heads dims meet in an attention op
        self.producers: list[Producer] = []
        self.head_splits: list[HeadSplit] = []
        self.rms_norms: list[tuple[int, str, str]] = []  # (space, RMSNorm module fqn, mean node) normalizing a stream
        self.layer_norms: list[int] = []  # spaces a LayerNorm normalizes (the stream is a hidden group, left dense)
        self.axis_space: dict[tuple[str, int], int] = {}
        self.param_nodes: set[torch.fx.Node] = set()  # placeholders of parameters and buffers

    # ---- spaces ---------------------------------------------------------------------------
    def new_space(self, target: str, kind: str, axis: int, offset: int, size: int) -> int:
        sid = len(self.spaces)
        self.spaces.append(Space(sid, target, kind, axis, offset, size))
        self.parent.append(sid)
        self.units[sid] = size
        self.blockers[sid] = []
        return sid

    def axis_labels(self, target: str, kind: str, shape: tuple[int, ...]) -> TLabels:
        labs: list[Label] = []
        for axis, size in enumerate(shape):
            key = (target, axis)
            if key not in self.axis_space:
                self.axis_space[key] = self.new_space(target, kind, axis, 0, int(size))
            labs.append(DL(self.axis_space[key]))
        return tuple(labs)

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def members(self, root: int) -> list[int]:
        return [s.id for s in self.spaces if not s.children and self.find(s.id) == root]

    # ---- coupling --------------------------------------------------------------------------
    def union(self, a: int, b: int, atoms: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            self.units[ra] = math.gcd(self.units[ra], atoms)
            return
        n = math.gcd(math.gcd(self.units[ra], self.units[rb]), atoms)
        self.parent[rb] = ra
        self.units[ra] = n
        self.blockers[ra].extend(self.blockers.pop(rb))
        self.units.pop(rb)
        if rb in self.attention:
            self.attention.discard(rb)
            self.attention.add(ra)

    def constrain(self, s: int, n: int) -> None:
        r = self.find(s)
        self.units[r] = math.gcd(self.units[r], n)

    def block(self, label: Label, reason: str, node: torch.fx.Node | None) -> None:
        for s in self.label_spaces(label):
            r = self.find(s)
            name = node.name if node is not None else "output"
            if not any(b.reason == reason and b.node == name for b in self.blockers[r]):
                self.blockers[r].append(Blocker(reason, name, node_source(node) if node is not None else None))

    def block_all(self, labels: Any, reason: str, node: torch.fx.Node | None) -> None:
        for lab in iter_labels(labels):
            if isinstance(lab, (DL, CL)):
                self.block(lab, reason, node)

    def label_spaces(self, label: Label) -> list[int]:
        if isinstance(label, (DL, IL)):
            return self.leaves(label.space)
        if isinstance(label, CL):
            out: list[int] = []
            for p in label.parts:
                if p is not None:
                    out.extend(self.leaves(p.space))
            return out
        return []

    def leaves(self, s: int) -> list[int]:
        sp = self.spaces[s]
        if not sp.children:
            return [s]
        out: list[int] = []
        for c in sp.children:
            out.extend(self.leaves(c))
        return out

    def resolve(self, label: Label, node: torch.fx.Node | None = None) -> Label:
        """Rewrite a label whose space was refined (split) since into a concatenation of the pieces."""
        if isinstance(label, DL) and self.spaces[label.space].children:
            if label.block != 1:
                self.block(label, "a head-structured channel dimension was later split", node)
                return None
            leaves = self.leaves(label.space)
            return CL(tuple(DL(c, 1, label.rep) for c in leaves), tuple(self.spaces[c].size * label.rep for c in leaves))
        if isinstance(label, CL):
            parts: list[DL | None] = []
            sizes: list[int] = []
            for p, n in zip(label.parts, label.sizes):
                r = self.resolve(p, node) if p is not None else None
                if isinstance(r, CL):
                    parts.extend(r.parts)
                    sizes.extend(r.sizes)
                else:
                    parts.append(r if isinstance(r, DL) else None)
                    sizes.append(n)
            return CL(tuple(parts), tuple(sizes))
        return label

    def refine(self, s: int, sizes: list[int], node: torch.fx.Node) -> list[int] | None:
        """Split leaf space ``s`` (and every member of its group, which must all have its size) into pieces."""
        sp = self.spaces[s]
        if sum(sizes) != sp.size:
            return None
        root = self.find(s)
        group = self.members(root)
        if any(self.spaces[m].size != sp.size for m in group):
            return None
        n_units = self.units[root]
        unit = sp.size // n_units
        if any(x % unit for x in sizes):
            return None
        blockers = list(self.blockers[root])
        attention = root in self.attention
        pieces_of: dict[int, list[int]] = {}
        for m in group:
            msp = self.spaces[m]
            off = msp.offset
            kids = []
            for x in sizes:
                kids.append(self.new_space(msp.target, msp.kind, msp.axis, off, x))
                off += x
            msp.children = kids
            pieces_of[m] = kids
        for i, x in enumerate(sizes):
            first = pieces_of[group[0]][i]
            for m in group[1:]:
                self.union(first, pieces_of[m][i], x // unit)
            r = self.find(first)
            self.units[r] = x // unit
            self.blockers[r] = list(blockers)
            if attention:
                self.attention.add(r)
        for p in list(self.producers):
            if p.space in pieces_of:
                self.producers.remove(p)
                for k in pieces_of[p.space]:
                    self.producers.append(Producer(k, p.op, p.module, p.node, p.channel_dim))
        return pieces_of[s]

    def couple(self, a: Label, b: Label, n: int, node: torch.fx.Node, why: str = "") -> None:
        """Channels ``i`` of ``a`` and ``b`` (a dimension of length ``n``) must be removed together."""
        a, b = self.resolve(a, node), self.resolve(b, node)
        if a is None and b is None:
            return
        if a is None or b is None:
            other = a if a is not None else b
            if not isinstance(other, IL):
                self.block(other, why or f"combined with a tensor that has no prunable channels at {node.target}", node)
            return
        if isinstance(a, IL) or isinstance(b, IL):
            # a position inside a head meets channel axis c of another tensor (RoPE's cos/sin built from
            # inv_freq): removing whole heads keeps every position, but that other axis must stay whole
            for lab in (a, b):
                if not isinstance(lab, IL):
                    self.block(lab, f"combined with the head_dim axis of attention at {node.target}", node)
            return
        if isinstance(a, DL) and isinstance(b, DL):
            atoms = n // math.lcm(a.rep, b.rep)
            if atoms < 1 or n % math.lcm(a.rep, b.rep):
                self.block(a, f"channel axes of different structure meet at {node.target}", node)
                self.block(b, f"channel axes of different structure meet at {node.target}", node)
                return
            self.union(a.space, b.space, atoms)
            return
        if isinstance(a, DL):
            a, b = b, a
        assert isinstance(a, CL)
        if isinstance(b, DL):
            if b.block != 1 or any(x % b.rep for x in a.sizes):
                self.block(a, f"a concatenation meets a channel axis of another layout at {node.target}", node)
                self.block(b, f"a concatenation meets a channel axis of another layout at {node.target}", node)
                return
            pieces = self.refine(b.space, [x // b.rep for x in a.sizes], node)
            if pieces is None:
                self.block(a, f"a concatenation meets a coupled channel group at {node.target}", node)
                self.block(b, f"a concatenation meets a coupled channel group at {node.target}", node)
                return
            b = CL(tuple(DL(p, 1, b.rep) for p in pieces), a.sizes)
        if isinstance(b, CL):
            if b.sizes != a.sizes:
                self.block(a, f"concatenations with different offsets meet at {node.target}", node)
                self.block(b, f"concatenations with different offsets meet at {node.target}", node)
                return
            for pa, pb, x in zip(a.parts, b.parts, a.sizes):
                self.couple(pa, pb, x, node, why)


def iter_labels(labels: Any) -> list[Label]:
    if labels is None:
        return []
    if isinstance(labels, (DL, IL, CL)):
        return [labels]
    out: list[Label] = []
    for x in labels:
        out.extend(iter_labels(x))
    return out


def reshape_labels(st: LabelState, labs: TLabels, in_shape: tuple[int, ...], out_shape: tuple[int, ...], node: torch.fx.Node) -> TLabels:
    """Labels after a view/reshape/flatten/unflatten/squeeze/unsqueeze from ``in_shape`` to ``out_shape``."""
    out: list[Label] = [None] * len(out_shape)
    labs = tuple(st.resolve(lab, node) for lab in labs)
    ins = [(i, int(s)) for i, s in enumerate(in_shape) if int(s) != 1]
    outs = [(j, int(s)) for j, s in enumerate(out_shape) if int(s) != 1]
    for i, s in enumerate(in_shape):
        if int(s) == 1 and labs[i] is not None and not isinstance(labs[i], IL):
            st.block(labs[i], "a one-channel axis is reshaped", node)
    i = j = 0
    while i < len(ins) and j < len(outs):
        gi, go = [ins[i]], [outs[j]]
        pi, po = ins[i][1], outs[j][1]
        i += 1
        j += 1
        while pi != po:
            if pi < po and i < len(ins):
                gi.append(ins[i])
                pi *= ins[i][1]
                i += 1
            elif po < pi and j < len(outs):
                go.append(outs[j])
                po *= outs[j][1]
                j += 1
            else:
                break
        glabs = [labs[d] for d, _ in gi]
        if pi != po:
            for lab in glabs:
                st.block(lab, "reshape that mixes channel axes", node)
            continue
        _group_rule(st, glabs, gi, go, out, node)
    for d, _ in ins[i:]:
        st.block(labs[d], "reshape that mixes channel axes", node)
    return tuple(out)


def _group_rule(st: LabelState, labs: list[Label], gi: list[tuple[int, int]], go: list[tuple[int, int]], out: list[Label], node: torch.fx.Node) -> None:
    if all(lab is None for lab in labs):
        return
    if len(gi) == 1 and len(go) == 1:
        out[go[0][0]] = labs[0]
        return
    head = labs[0]
    if len(gi) == 1:  # one axis split into several
        n = gi[0][1]
        sizes = [s for _, s in go]
        if isinstance(head, DL) and head.block == 1 and head.rep == 1 and len(go) == 2:
            h, d = sizes
            out[go[0][0]] = DL(head.space, d, 1)
            out[go[1][0]] = IL(head.space, d)
            st.constrain(head.space, h)
            st.head_splits.append(HeadSplit(head.space, h, d, node.name, module_stack(node), node_source(node)))
            return
        if isinstance(head, DL) and head.rep > 1 and sizes[0] == n // head.rep and math.prod(sizes[1:]) == head.rep:
            out[go[0][0]] = DL(head.space, head.block, 1)
            return
        if isinstance(head, DL) and head.block > 1 and head.rep == 1 and len(go) == 2:
            # heads dim (H) split into (KVH, n_rep) by GQA-aware code: index (g, r) reads block g*n_rep+r
            st.block(head, "the heads axis is split", node)
            return
        st.block(head, "reshape that splits a channel axis in an unsupported way", node)
        return
    if len(go) == 1:  # several axes merged into one
        rest = labs[1:]
        if isinstance(head, DL) and all(r is None for r in rest):
            out[go[0][0]] = DL(head.space, head.block, head.rep * math.prod(s for _, s in gi[1:]))
            return
        if (
            isinstance(head, DL)
            and head.rep == 1
            and isinstance(rest[0], IL)
            and rest[0].block == head.block
            and gi[1][1] == head.block
            and st.find(rest[0].space) == st.find(head.space)
            and all(r is None for r in rest[1:])
        ):
            out[go[0][0]] = DL(head.space, 1, math.prod(s for _, s in gi[2:]))
            return
        if isinstance(head, CL) and all(r is None for r in rest):
            r_ = math.prod(s for _, s in gi[1:])
            out[go[0][0]] = CL(tuple(None if p is None else DL(p.space, 1, p.rep * r_) for p in head.parts), tuple(x * r_ for x in head.sizes))
            return
    for lab in labs:
        st.block(lab, "reshape that mixes channel axes", node)
