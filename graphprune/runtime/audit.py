"""Read an ONNX file back and report, per weight, its sparsity and whether N:M holds on TensorRT's axis.

This module also owns :func:`find_weight_uses`, the one place that decides which ONNX tensors are
prunable weights and along which axis K they are grouped; the ONNX pruning pass uses it too.

Which axis (TensorRT's reduction axis K, in the node's view of the weight):

=============  ====================================  ======================================
op             weight input                           K axis
=============  ====================================  ======================================
MatMul         B (input 1)                            0 for rank <= 2, else -2
Gemm           B (input 1)                            1 when ``transB=1`` else 0
Conv           W ``[out, in/groups, *kernel]``        1
ConvTranspose  W ``[in, out/groups, *kernel]``        0
=============  ====================================  ======================================

The weight may reach the node through ``Identity``, ``Cast``, ``CastLike`` and ``Transpose`` nodes
(never through ``Reshape``-like ops, which do not preserve axes). The K axis is mapped back to the
stored tensor through each Transpose: output axis ``i`` of a Transpose is input axis ``perm[i]``.
Weights stored as initializers and as ``Constant`` nodes (``value`` attribute) are both found.
"""

from __future__ import annotations

import ast
import os
from collections import Counter
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from graphprune.errors import ConfigError, InputError
from graphprune.sparsity import check_nm

__all__ = [
    "WEIGHT_OPS",
    "AuditLayer",
    "AuditReport",
    "WeightUse",
    "as_float_tensor",
    "audit_onnx",
    "find_weight_uses",
    "load_onnx_checked",
    "onnx_weight_array",
]

WEIGHT_OPS: dict[str, int] = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1}  # op -> weight input index
_PASS_THROUGH = ("Identity", "Cast", "CastLike", "Transpose")
_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}


# ---- loading ----------------------------------------------------------------------------------
def load_onnx_checked(model_or_path: str | os.PathLike[str] | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Load an ONNX model and run ``onnx.checker`` on it; returns ``(model, label)``.

    Raises :class:`InputError` naming the file when it is missing, unreadable or fails the checker.
    """
    if isinstance(model_or_path, onnx.ModelProto):
        label = "<in-memory ONNX model>"
        try:
            onnx.checker.check_model(model_or_path)
        except (onnx.checker.ValidationError, ValueError) as e:
            raise InputError(f"{label} fails onnx.checker: {e}") from e
        return model_or_path, label
    path = Path(model_or_path)
    label = str(path)
    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist (or is not a file)")
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # checker raises ValidationError, or protobuf/IO errors on garbage
        raise InputError(f"ONNX file {path} fails onnx.checker ({type(e).__name__}): {e}") from e
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise InputError(f"ONNX file {path} cannot be loaded: {e}") from e
    return model, label


def onnx_weight_array(tensor: onnx.TensorProto) -> np.ndarray:
    """A TensorProto as numpy (bfloat16 comes back as ``ml_dtypes.bfloat16`` where onnx provides it)."""
    return np.asarray(numpy_helper.to_array(tensor))


def as_float_tensor(arr: np.ndarray) -> torch.Tensor:
    """A float32 torch copy of a weight array (any float dtype, incl. ml_dtypes bfloat16)."""
    return torch.from_numpy(np.array(arr, dtype=np.float32))  # a writable copy


# ---- finding weights --------------------------------------------------------------------------
@dataclass
class WeightUse:
    """One weight read by one MatMul/Gemm/Conv/ConvTranspose node."""

    node: str  # node name (or its first output when unnamed)
    op: str  # ONNX op type
    source: str  # initializer name, or the Constant node's output name
    stored_as: str  # "initializer" or "constant"
    shape: tuple[int, ...]  # stored tensor shape
    k_axis: int  # K axis in the stored tensor (non-negative)
    node_k_axis: int  # K axis in the node's view of the weight (non-negative)
    path: tuple[str, ...]  # ops between the stored tensor and the node, nearest-to-node first
    uses: int  # readers of the stored tensor and of every value on the path (1 = exclusive)
    module: str  # module scope from exporter metadata, "" where unknown
    data_type: int  # onnx.TensorProto data type
    group: int = 1  # Conv/ConvTranspose group attribute
    tensor: onnx.TensorProto | None = field(default=None, repr=False)

    @property
    def k(self) -> int:
        return self.shape[self.k_axis]

    @property
    def is_float(self) -> bool:
        return self.data_type in _FLOAT_TYPES


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_k_axis(node: onnx.NodeProto, rank: int) -> int:
    op = node.op_type
    if op == "MatMul":
        return 0 if rank <= 2 else rank - 2
    if op == "Gemm":
        return 1 if int(_attr(node, "transB", 0)) else 0
    if op == "Conv":
        return 1
    return 0  # ConvTranspose


def _module_scope(node: onnx.NodeProto) -> str:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                break
            parts = [s for s in scopes[:-1] if s]  # last entry is the op itself
            return ".".join(parts)
    if node.name.startswith("/") and node.name.count("/") >= 2:  # TorchScript exporter: /fc1/Gemm
        return ".".join(p for p in node.name.split("/")[1:-1] if p)
    return ""


def _use_counts(graph: onnx.GraphProto) -> Counter[str]:
    """How many node inputs (including in subgraphs) and graph outputs read each value name."""
    counts: Counter[str] = Counter()

    def walk(g: onnx.GraphProto) -> None:
        for n in g.node:
            counts.update(i for i in n.input if i)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        walk(sub)
        counts.update(o.name for o in g.output)

    walk(graph)
    return counts


def find_weight_uses(model: onnx.ModelProto) -> list[WeightUse]:
    """Every MatMul/Gemm/Conv/ConvTranspose weight that comes from a stored tensor, with its K axis.

    Only the top-level graph is searched (not subgraphs or local functions). Nodes whose weight is
    computed at run time (an activation, a Reshape of a weight, ...) are not listed.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer: dict[str, onnx.NodeProto] = {}
    for n in graph.node:
        for o in n.output:
            if o:
                producer[o] = n
    counts = _use_counts(graph)
    out: list[WeightUse] = []
    for node in graph.node:
        idx = WEIGHT_OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if idx is None or len(node.input) <= idx or not node.input[idx]:
            continue
        name = node.input[idx]
        chain: list[onnx.NodeProto] = []
        uses = 0
        tensor: onnx.TensorProto | None = None
        stored_as = ""
        while True:
            uses = max(uses, counts[name])
            if name in inits:
                tensor, stored_as = inits[name], "initializer"
                break
            prod = producer.get(name)
            if prod is None:
                break  # a graph input: not a stored weight
            if prod.op_type == "Constant":
                value = _attr(prod, "value", None)
                if isinstance(value, onnx.TensorProto):
                    tensor, stored_as = value, "constant"
                break
            if prod.op_type not in _PASS_THROUGH or not prod.input:
                break
            chain.append(prod)
            name = prod.input[0]
        if tensor is None:
            continue
        shape = tuple(int(d) for d in tensor.dims)
        rank = len(shape)
        if rank == 0:
            continue
        node_k = _node_k_axis(node, rank)
        axis = node_k
        for t in chain:  # nearest to the node first
            if t.op_type == "Transpose":
                perm = _attr(t, "perm", None)
                perm = list(perm) if perm is not None else list(reversed(range(rank)))
                axis = int(perm[axis])
        out.append(
            WeightUse(
                node=node.name or node.output[0],
                op=node.op_type,
                source=name,
                stored_as=stored_as,
                shape=shape,
                k_axis=axis,
                node_k_axis=node_k,
                path=tuple(t.op_type for t in chain),
                uses=uses,
                module=_module_scope(node),
                data_type=tensor.data_type,
                group=int(_attr(node, "group", 1)) if node.op_type in ("Conv", "ConvTranspose") else 1,
                tensor=tensor,
            )
        )
    return out


# ---- the audit --------------------------------------------------------------------------------
@dataclass
class AuditLayer:
    """One weight use as found in the ONNX file."""

    node: str
    op: str
    initializer: str
    shape: tuple[int, ...]
    k_axis: int
    k: int
    numel: int
    zeros: int
    sparsity: float
    module: str = ""
    stored_as: str = "initializer"
    path: tuple[str, ...] = ()
    uses: int = 1
    nm_ok: bool | None = None  # None when no N:M was asked for
    nm_groups: int = 0
    nm_violations: int = 0
    nm_max_nonzeros: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["path"] = list(self.path)
        return d


@dataclass
class AuditReport:
    """Per-weight audit of an ONNX file. ``ok`` is False when an expected weight does not hold N:M."""

    ok: bool
    layers: list[AuditLayer]
    n: int | None = None
    m: int | None = None
    source: str = ""
    missing: list[str] = field(default_factory=list)  # expected names not found

    @property
    def pattern(self) -> str | None:
        return f"{self.n}:{self.m}" if self.n is not None else None

    def totals(self) -> dict[str, Any]:
        seen: dict[str, AuditLayer] = {}
        for layer in self.layers:
            seen.setdefault(layer.initializer, layer)
        numel = sum(x.numel for x in seen.values())
        zeros = sum(x.zeros for x in seen.values())
        return {
            "layers": len(self.layers),
            "weights": len(seen),
            "params": numel,
            "zeros": zeros,
            "sparsity": zeros / numel if numel else 0.0,
            "nm_ok": sum(x.nm_ok is True for x in self.layers),
            "nm_failed": sum(x.nm_ok is False for x in self.layers),
        }

    def summary(self) -> str:
        t = self.totals()
        ops = Counter(x.op for x in self.layers)
        text = (
            f"audit {'ok' if self.ok else 'FAILED'}: {t['layers']} weight uses "
            f"({', '.join(f'{k} {v}' for k, v in sorted(ops.items()))}), sparsity {t['sparsity']:.1%}"
        )
        if self.n is not None:
            text += f", {self.pattern} holds on {t['nm_ok']}/{t['layers']}"
        if self.missing:
            text += f", expected but not found: {', '.join(self.missing)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "n": self.n,
            "m": self.m,
            "summary": self.summary(),
            "totals": self.totals(),
            "missing": list(self.missing),
            "layers": [x.to_dict() for x in self.layers],
        }


def _audit_use(use: WeightUse, n: int | None, m: int | None) -> AuditLayer:
    if use.tensor is None:
        raise ValueError(f"weight use {use.node} carries no tensor (not made by find_weight_uses)")
    arr = onnx_weight_array(use.tensor)
    numel = int(arr.size)
    zeros = int(numel - np.count_nonzero(arr))
    layer = AuditLayer(
        node=use.node,
        op=use.op,
        initializer=use.source,
        shape=use.shape,
        k_axis=use.k_axis,
        k=use.k,
        numel=numel,
        zeros=zeros,
        sparsity=zeros / numel if numel else 0.0,
        module=use.module,
        stored_as=use.stored_as,
        path=use.path,
        uses=use.uses,
    )
    if n is None or m is None:
        return layer
    if use.k % m != 0:
        layer.nm_ok = False
        layer.note = f"K={use.k} (axis {use.k_axis}) is not divisible by M={m}"
        return layer
    res = check_nm(as_float_tensor(arr), n, m, axis=use.k_axis)
    layer.nm_ok = bool(res.ok)
    layer.nm_groups = int(res.groups)
    layer.nm_violations = int(res.violations)
    layer.nm_max_nonzeros = int(res.max_nonzeros)
    if not res.ok:
        layer.note = f"{res.violations}/{res.groups} groups of {m} along axis {use.k_axis} keep more than {n}"
    return layer


def audit_onnx(
    model_or_path: str | os.PathLike[str] | onnx.ModelProto,
    *,
    n: int | None = None,
    m: int | None = None,
    expect: Collection[str] | None = None,
) -> AuditReport:
    """Audit every MatMul/Gemm/Conv/ConvTranspose weight of an ONNX model.

    The file is checked with ``onnx.checker`` first (:class:`InputError` naming it when it fails).
    With ``n`` and ``m``, each weight is checked for N:M along its TensorRT K axis. ``ok`` then
    means: every *expected* weight holds N:M, where ``expect`` names initializers (or nodes) that
    must hold it; by default every weight whose K is divisible by ``m`` is expected. Without
    ``n``/``m`` the report only lists weights and sparsity (``ok`` is True).
    """
    if (n is None) != (m is None):
        raise ConfigError(f"audit_onnx needs both n and m (or neither), got n={n!r}, m={m!r}")
    if n is not None and m is not None and not (0 < n < m):
        raise ConfigError(f"audit_onnx: N:M pattern {n}:{m} is invalid: need 0 < N < M")
    model, label = load_onnx_checked(model_or_path)
    layers = [_audit_use(u, n, m) for u in find_weight_uses(model)]
    missing: list[str] = []
    ok = True
    if n is not None and m is not None:
        if expect is None:
            ok = all(x.nm_ok for x in layers if x.k % m == 0)
        else:
            wanted = set(expect)
            found = {x.initializer for x in layers} | {x.node for x in layers}
            missing = sorted(wanted - found)
            ok = not missing and all(x.nm_ok for x in layers if x.initializer in wanted or x.node in wanted)
    return AuditReport(ok=ok, layers=layers, n=n, m=m, source=label, missing=missing)
