"""Coupled channel groups: the sets of channels that must be removed together (read-only analysis).

IR: the ATen graph of ``torch.export.export(model, example_inputs, strict=False)``; parameters and
buffers are mapped back to module fqns through ``graph_signature.inputs_to_parameters`` /
``inputs_to_buffers``. Nothing is rewritten here: :func:`find_groups` only reads the graph.

Each group lists, for every parameter/buffer axis it touches, the range of that axis it covers
(``GroupMember``), the ops that produce its channels, and the number of *units* it can be cut into
(a unit is one channel, one attention head, or one GQA KV group with its query heads). Groups that
some op keeps from being sliced carry ``blockers`` naming the node (a LayerNorm/RMSNorm over a
residual stream, a grouped conv, an unknown op, the model output, ...); they are left dense.

Covered (see ``group_rules.RULES``): conv → BN → activation → residual add → every consumer; concat
and split with offsets; depthwise conv (input and output channels coupled); flatten → Linear (each
channel spans H*W features); attention heads (q/k/v rows, o columns; sdpa and eager matmul
attention; GQA via expand/reshape or ``enable_gqa``: a KV head goes with its query group); FFN
neurons (up and gate rows, down columns); tied weights (one parameter fqn, all uses coupled); the
hidden size of a residual stream that RMSNorm normalizes (kind ``hidden``: every producer, reader
and norm weight of the stream; a LayerNorm blocks it, since its mean changes when channels go);
``nn.MultiheadAttention`` heads (stated from the module: see :func:`_multihead_attention`).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.fx
from torch import nn

from graphprune._module_tensors import eval_mode
from graphprune.analysis._labels import Blocker, HeadSplit, LabelState, Producer, node_source
from graphprune.analysis.group_rules import RULES, apply_rule, op_name, shape_of
from graphprune.errors import UnsupportedModelError

GroupKind = Literal["channels", "ffn", "heads", "hidden"]
_LINEAR_OPS = ("linear", "addmm", "matmul")


@dataclass
class GroupMember:
    """Range ``[offset, offset + size)`` of axis ``axis`` of a parameter or buffer."""

    target: str
    kind: str  # "parameter" | "buffer"
    axis: int
    offset: int
    size: int
    producer: bool = False  # an op writes these as its output channels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HeadsInfo:
    module: str  # fqn of the attention module (the innermost module around the head split)
    num_heads: int
    num_kv_heads: int
    head_dim: int
    split_nodes: list[str] = field(default_factory=list)

    @property
    def heads_per_kv(self) -> int:
        return self.num_heads // max(1, self.num_kv_heads)


@dataclass
class ChannelGroup:
    id: int
    kind: GroupKind
    units: int  # removable pieces: channels, or KV groups (heads) for attention
    members: list[GroupMember]
    producers: list[Producer]
    blockers: list[Blocker] = field(default_factory=list)
    heads: HeadsInfo | None = None
    reshape_nodes: list[str] = field(default_factory=list)  # head-split views (a folded constant shows here)
    norms: list[str] = field(default_factory=list)  # RMSNorm modules normalizing these channels (kind "hidden")

    @property
    def name(self) -> str:
        """The module that owns the group's first producer (what the report calls the layer)."""
        if self.heads is not None:
            return self.heads.module
        for p in self.producers:
            if p.module:
                return p.module
        return self.members[0].target.rpartition(".")[0] if self.members else f"group{self.id}"

    @property
    def producer_members(self) -> list[GroupMember]:
        return [m for m in self.members if m.producer]

    @property
    def channels(self) -> int:
        """Width of the group in channels (of its first producer)."""
        pm = self.producer_members
        return pm[0].size if pm else self.members[0].size

    @property
    def prunable(self) -> bool:
        return not self.blockers

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "units": self.units,
            "channels": self.channels,
            "members": [m.to_dict() for m in self.members],
            "producers": [asdict(p) for p in self.producers],
            "blockers": [asdict(b) for b in self.blockers],
            "heads": asdict(self.heads) if self.heads else None,
            "norms": list(self.norms),
        }


@dataclass
class GroupAnalysis:
    groups: list[ChannelGroup]
    graph_nodes: int
    unknown_ops: dict[str, int] = field(default_factory=dict)

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]


@contextlib.contextmanager
def _no_cache(model: nn.Module) -> Iterator[None]:
    """HF models return a KV cache object torch.export cannot flatten; analysis needs no cache."""
    cfg = getattr(model, "config", None)
    old = getattr(cfg, "use_cache", None)
    if old:
        cfg.use_cache = False
    try:
        yield
    finally:
        if old:
            cfg.use_cache = old


def export_for_analysis(model: nn.Module, example_inputs: Sequence[Any]) -> torch.export.ExportedProgram:
    """``torch.export.export(strict=False)`` in eval mode (the model's modes are restored after)."""
    try:
        with eval_mode(model), _no_cache(model), torch.no_grad():
            return torch.export.export(model, tuple(example_inputs), strict=False)
    except Exception as e:
        raise UnsupportedModelError(
            f"structured pruning needs a graph, and torch.export.export(strict=False) failed on "
            f"{type(model).__name__}: {type(e).__name__}: {str(e)[:800]}"
        ) from e


def find_groups(
    model: nn.Module, example_inputs: Sequence[Any], *, exported: torch.export.ExportedProgram | None = None
) -> GroupAnalysis:
    """Coupled channel groups of ``model`` (only groups some op produces: weight rows, embedding columns)."""
    ep = exported if exported is not None else export_for_analysis(model, example_inputs)
    sig = ep.graph_signature
    params = dict(sig.inputs_to_parameters)
    buffers = dict(sig.inputs_to_buffers)
    user_outputs = set(sig.user_outputs)
    st = LabelState()
    env: dict[torch.fx.Node, Any] = {}
    unknown: dict[str, int] = defaultdict(int)
    n_nodes = 0
    for node in ep.graph.nodes:
        n_nodes += 1
        if node.op == "placeholder":
            fqn = params.get(node.name) or buffers.get(node.name)
            sh = shape_of(node)
            if fqn is not None and sh is not None:
                env[node] = st.axis_labels(fqn, "parameter" if node.name in params else "buffer", sh)
                st.param_nodes.add(node)
            else:
                env[node] = None
        elif node.op == "call_function":
            if op_name(node.target) not in RULES:
                unknown[str(node.target)] += 1
            env[node] = apply_rule(st, node, env)
        elif node.op == "output":
            outs = node.args[0] if isinstance(node.args[0], (list, tuple)) else [node.args[0]]
            for o in outs:
                if isinstance(o, torch.fx.Node) and (o.name in user_outputs or not user_outputs):
                    st.block_all(env.get(o), "reaches the model output (its shape must not change)", o)
    groups = _multihead_attention(model, _collect(st))
    return GroupAnalysis(groups, n_nodes, dict(unknown))


def _multihead_attention(model: nn.Module, groups: list[ChannelGroup]) -> list[ChannelGroup]:
    """Heads groups of ``nn.MultiheadAttention`` modules, built from the module itself.

    Inside ``F.multi_head_attention_forward`` the packed in_proj output is unflattened to
    ``(3, embed_dim)`` and selected, so the label rules lose the heads there. The module's forward is
    fixed and known, so its group is stated directly: q/k/v rows (``in_proj_weight`` thirds, or
    ``q/k/v_proj_weight``) and their biases, and ``out_proj`` columns, one unit per head. Groups the
    rules built from those tensors are replaced. A module whose forward is not the stock one, or that
    uses ``add_bias_kv`` / ``add_zero_attn``, gets the group with a blocker saying why.
    """
    from graphprune.layers import SlimMultiheadAttention, unsupported_reason

    for fqn, m in model.named_modules():
        if not isinstance(m, nn.MultiheadAttention):
            continue
        pre = f"{fqn}." if fqn else ""
        e, h = int(m.embed_dim), int(m.num_heads)
        fused = m.in_proj_weight is not None
        q_rows = [pre + "in_proj_weight"] if fused else [pre + n for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight")]
        own = {(t, 0) for t in q_rows} | {(pre + "in_proj_bias", 0), (pre + "out_proj.weight", 1)}
        old = [g for g in groups if any((mm.target, mm.axis) in own for mm in g.members)]
        if not old:
            continue  # not reached by the traced forward
        at = min(groups.index(g) for g in old)
        for g in old:
            groups.remove(g)
        members: list[GroupMember] = []
        for i in range(3):
            members.append(GroupMember(q_rows[0] if fused else q_rows[i], "parameter", 0, i * e if fused else 0, e, producer=True))
        if m.in_proj_bias is not None:
            members += [GroupMember(pre + "in_proj_bias", "parameter", 0, i * e, e) for i in range(3)]
        members.append(GroupMember(pre + "out_proj.weight", "parameter", 1, 0, e))
        blockers: list[Blocker] = []
        node = old[0].producers[0].node if old[0].producers else ""
        outside = sorted({mm.target for g in old for mm in g.members if (mm.target, mm.axis) not in own})
        if type(m).forward not in (nn.MultiheadAttention.forward, SlimMultiheadAttention.forward):
            blockers.append(Blocker(f"{type(m).__name__} {fqn} overrides nn.MultiheadAttention.forward", node))
        elif reason := unsupported_reason(m):
            blockers.append(Blocker(f"nn.MultiheadAttention {fqn}: {reason}, so its heads cannot be removed", node))
        elif outside:
            blockers.append(Blocker(f"the q/k/v channels of {fqn} are also read by {outside[0]}", node))
        elif h < 2:
            blockers.append(Blocker("the group has a single removable unit", node))
        groups.insert(
            at,
            ChannelGroup(
                id=-1,
                kind="heads",
                units=h,
                members=members,
                producers=[p for g in old for p in g.producers],
                blockers=blockers,
                heads=HeadsInfo(module=fqn, num_heads=h, num_kv_heads=h, head_dim=e // h),
            ),
        )
    for i, g in enumerate(groups):
        g.id = i
    return groups


def _collect(st: LabelState) -> list[ChannelGroup]:
    by_root: dict[int, list[int]] = defaultdict(list)
    for sp in st.spaces:
        if not sp.children:
            by_root[st.find(sp.id)].append(sp.id)
    prod_by_root: dict[int, list[Producer]] = defaultdict(list)
    for p in st.producers:
        if not st.spaces[p.space].children:
            prod_by_root[st.find(p.space)].append(p)
    splits_by_root: dict[int, list[HeadSplit]] = defaultdict(list)
    for hs in st.head_splits:
        for leaf in st.leaves(hs.space):
            splits_by_root[st.find(leaf)].append(hs)
    norms_by_root: dict[int, list[str]] = defaultdict(list)
    for space, module, _node in st.rms_norms:
        for leaf in st.leaves(space):
            if module not in norms_by_root[st.find(leaf)]:
                norms_by_root[st.find(leaf)].append(module)
    layer_norm_roots = {st.find(leaf) for space in st.layer_norms for leaf in st.leaves(space)}
    groups: list[ChannelGroup] = []
    for root, prods in prod_by_root.items():
        prod_spaces = {p.space for p in prods}
        members = [
            GroupMember(
                st.spaces[s].target, st.spaces[s].kind, st.spaces[s].axis, st.spaces[s].offset, st.spaces[s].size, s in prod_spaces
            )
            for s in sorted(by_root[root])
        ]
        units = st.units[root]
        blockers = list(st.blockers.get(root, []))
        splits = _dedupe_splits(splits_by_root.get(root, []))
        heads = None
        kind: GroupKind
        if root in st.attention and splits:
            kind = "heads"
            heads = _heads_info(splits)
            if heads.num_heads % max(1, heads.num_kv_heads):
                blockers.append(Blocker(f"{heads.num_heads} query heads do not divide into {heads.num_kv_heads} KV heads", splits[0].node, splits[0].source))
        elif norms_by_root.get(root) or root in layer_norm_roots:
            kind = "hidden"
        elif all(p.op in _LINEAR_OPS for p in prods):
            kind = "ffn"
        else:
            kind = "channels"
        if units <= 1 and not blockers:
            blockers.append(Blocker("the group has a single removable unit", prods[0].node))
        groups.append(
            ChannelGroup(
                id=len(groups),
                kind=kind,
                units=units,
                members=members,
                producers=sorted(prods, key=lambda p: p.node),
                blockers=blockers,
                heads=heads,
                reshape_nodes=[s.node for s in splits],
                norms=list(norms_by_root.get(root, [])),
            )
        )
    groups.sort(key=lambda g: min(_st_index(st, m) for m in g.producers))
    for i, g in enumerate(groups):
        g.id = i
    return groups


def _st_index(st: LabelState, p: Producer) -> int:
    return p.space if not st.spaces[p.space].children else min(st.leaves(p.space))


def _dedupe_splits(splits: list[HeadSplit]) -> list[HeadSplit]:
    seen: dict[str, HeadSplit] = {}
    for s in splits:
        seen.setdefault(s.node, s)
    return list(seen.values())


def _heads_info(splits: list[HeadSplit]) -> HeadsInfo:
    stacks = [s.module_stack for s in splits]
    common: list[str] = []
    for level in zip(*stacks):
        if all(x == level[0] for x in level):
            common.append(level[0][0])
        else:
            break
    module = common[-1] if common else ""
    hs = [s.heads for s in splits]
    q = max(splits, key=lambda s: s.heads)
    return HeadsInfo(module=module, num_heads=max(hs), num_kv_heads=min(hs), head_dim=q.head_dim, split_nodes=[s.node for s in splits])


__all__ = [
    "ChannelGroup",
    "GroupAnalysis",
    "GroupMember",
    "HeadsInfo",
    "export_for_analysis",
    "find_groups",
    "node_source",
]
