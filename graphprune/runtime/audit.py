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

Bounded memory: :func:`audit_onnx` loads the graph without its external data and reads each weight
from disk on its own (:func:`graphprune.runtime.external_data.tensor_array`), so auditing a model of
many GB holds one weight at a time; ``onnx.checker`` runs on the path.

:func:`audit_compiled` is the compile pipeline's audit: every pruned parameter must be found in the
ONNX (through :attr:`~graphprune.runtime.export.ExportRecord.initializer_sources`, which maps
initializers to parameters by value, not by name: BatchNorm folding, constant folding and renaming
such as ``onnx::Conv_60`` or ``val_9`` change names) with its own pattern intact.
"""

from __future__ import annotations

import ast
import os
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from graphprune.config import ElementPattern, SemiStructured
from graphprune.errors import ConfigError, InputError
from graphprune.runtime.external_data import is_external, load_onnx_header, tensor_array
from graphprune.sparsity import check_nm

__all__ = [
    "WEIGHT_OPS",
    "AuditLayer",
    "AuditReport",
    "WeightUse",
    "as_float_tensor",
    "audit_compiled",
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
def load_onnx_checked(
    model_or_path: str | os.PathLike[str] | onnx.ModelProto, *, load_external_data: bool = True
) -> tuple[onnx.ModelProto, str]:
    """Load an ONNX model and run ``onnx.checker`` on it; returns ``(model, label)``.

    ``load_external_data=False`` leaves external tensors on disk (read them with
    :func:`onnx_weight_array` and the file's folder); the data files are still checked to exist and
    be long enough. Raises :class:`InputError` naming the file when it (or one of its external data
    files) is missing, unreadable or fails the checker.
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
    model = load_onnx_header(path)
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # checker raises ValidationError, or protobuf/IO errors on garbage
        raise InputError(f"ONNX file {path} fails onnx.checker ({type(e).__name__}): {str(e).splitlines()[0] if str(e) else e}") from e
    if load_external_data and any(is_external(t) for t in model.graph.initializer):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as e:
            raise InputError(f"external data of ONNX file {path} cannot be read: {e}") from e
    return model, label


def onnx_weight_array(tensor: onnx.TensorProto, base_dir: str | os.PathLike[str] | None = None) -> np.ndarray:
    """A TensorProto as numpy (bfloat16 comes back as ``ml_dtypes.bfloat16``).

    External tensors are read from their data file in ``base_dir`` (never through ``to_array`` on an
    unloaded tensor); :class:`InputError` names a missing file.
    """
    if is_external(tensor):
        return tensor_array(tensor, base_dir)
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


def _audit_use(use: WeightUse, n: int | None, m: int | None, base_dir: Path | None = None) -> AuditLayer:
    if use.tensor is None:
        raise ValueError(f"weight use {use.node} carries no tensor (not made by find_weight_uses)")
    arr = onnx_weight_array(use.tensor, base_dir)
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
    progress: bool = False,
) -> AuditReport:
    """Audit every MatMul/Gemm/Conv/ConvTranspose weight of an ONNX model.

    The file is checked with ``onnx.checker`` first (:class:`InputError` naming it when it fails).
    With ``n`` and ``m``, each weight is checked for N:M along its TensorRT K axis. ``ok`` then
    means: every *expected* weight holds N:M, where ``expect`` names initializers (or nodes) that
    must hold it; by default every weight whose K is divisible by ``m`` is expected. Without
    ``n``/``m`` the report only lists weights and sparsity (``ok`` is True). Weights are read one at a
    time (external data straight from disk); ``progress`` shows a bar over them.
    """
    if (n is None) != (m is None):
        raise ConfigError(f"audit_onnx needs both n and m (or neither), got n={n!r}, m={m!r}")
    if n is not None and m is not None and not (0 < n < m):
        raise ConfigError(f"audit_onnx: N:M pattern {n}:{m} is invalid: need 0 < N < M")
    from tqdm.auto import tqdm

    model, label = load_onnx_checked(model_or_path, load_external_data=False)
    base_dir = None if isinstance(model_or_path, onnx.ModelProto) else Path(model_or_path).parent
    uses = find_weight_uses(model)
    layers = [
        _audit_use(u, n, m, base_dir)
        for u in tqdm(uses, desc="audit", unit="weight", disable=not progress, leave=False)
    ]
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


def audit_compiled(
    onnx_path: str | os.PathLike[str],
    patterns: Mapping[str, ElementPattern],
    min_zeros: Mapping[str, int],
    sources: Mapping[str, Mapping[str, Any]],
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Audit a compiled ONNX: every pruned parameter must be found there with its own pattern intact.

    ``patterns``: parameter fqn -> the pattern it was pruned with; ``min_zeros``: zeros each must keep
    at least (unstructured patterns); ``sources``: initializer -> ``{"param", "aliases"?, ...}`` (the
    export record's value mapping: no parameter is looked up by name). Each distinct N:M pattern is
    checked on its own initializers, in one streaming pass over the file per pattern.
    """
    param_to_init: dict[str, str] = {}
    for init, info in sources.items():
        for p in [info.get("param"), *info.get("aliases", ())]:
            if p:
                param_to_init.setdefault(str(p), init)
    by_pattern: dict[tuple[int, int] | None, list[str]] = {}
    for name, pat in patterns.items():
        key = (pat.n, pat.m) if isinstance(pat, SemiStructured) else None
        by_pattern.setdefault(key, []).append(name)
    reports: dict[tuple[int, int] | None, AuditReport] = {}
    for key, names in by_pattern.items():
        if key is None:
            continue
        present = [param_to_init[n] for n in names if n in param_to_init]
        reports[key] = audit_onnx(onnx_path, n=key[0], m=key[1], expect=present, progress=progress)
    base = next(iter(reports.values())) if reports else audit_onnx(onnx_path, progress=progress)
    layers = {layer.initializer: layer for layer in base.layers}
    not_found = sorted(n for n in patterns if param_to_init.get(n) not in layers)
    violations: list[str] = []
    checked = 0
    for key, names in by_pattern.items():
        present = [n for n in names if param_to_init.get(n) in layers]
        if key is None:
            for n in present:
                checked += 1
                if layers[param_to_init[n]].zeros < int(min_zeros.get(n, 0)):
                    violations.append(n)
            continue
        nm_ok = {layer.initializer: layer.nm_ok for layer in reports[key].layers}
        for n in present:
            checked += 1
            if not nm_ok.get(param_to_init[n], False):
                violations.append(n)
    ok = not violations and not not_found
    pats = ", ".join(sorted({str(p) for p in patterns.values()})) or "none"
    summary = (
        f"{len(layers)} weights in the ONNX; {checked}/{len(patterns)} pruned layers found; "
        f"pattern ({pats}) holds on the TensorRT axis for {checked - len(violations)}/{checked}"
        + (f"; violations in {violations[:5]}" if violations else "")
        + (f"; not found: {not_found[:5]}" if not_found else "")
    )
    return {
        "ok": ok,
        "summary": summary,
        "matched": checked,
        "violations": violations,
        "not_found": not_found,
        "initializer_of": param_to_init,
        "layers": [layer.to_dict() for layer in base.layers],
    }
