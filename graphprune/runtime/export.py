"""torch -> ONNX export with exporter fallbacks, dynamic axes, external data, bounded memory.

Exporters, tried in order until one works (:data:`EXPORTERS`; each attempt and its error, one line,
land in :attr:`ExportRecord.attempts`)
----------------------------------------------------------------------------------------------------
1. ``dynamo``: ``torch.export.export(strict=False)`` with the dynamic axes asked for, then
   ``torch.onnx.export(exported_program, dynamo=True, optimize=True)`` (onnxscript underneath).
2. ``dynamo-relaxed``: tried only when (1) failed while *decomposing* the graph (step 2/3 of the
   dynamo exporter). That step runs with size-oblivious shape reasoning, under which a ``reshape`` /
   ``view`` of a transposed tensor can be judged viewable when it is not (stock HF T5 and Swin fail
   so: "Cannot view a tensor with shape ... and strides ..."). The same exported program is retried
   with a contiguous ``clone`` before every view/reshape, which makes each one legal; a clone is
   nothing in ONNX, so the graph computes the same (parity checks it).
3. ``torchscript``: ``torch.onnx.export(dynamo=False)``, which torch 2.13 still ships; the only
   exporter for ``torch.jit.ScriptModule`` inputs. It constant-folds (BatchNorm into Conv) and renames
   initializers (``onnx::Conv_60``): :attr:`ExportRecord.initializer_sources` maps them back by value.
   It comes after the relaxed retry (the issue's order put it second) because what it gives is
   poorer: renamed and rescaled weights, no module-scope metadata, and no ExportedProgram, so
   ``pruned.pt2`` would be traced again without the dynamic batch. Both give stock T5 and Swin
   exactly (parity ~1e-6); the order is an option (``exporters``).

Every exporter runs with the model's train/eval flags restored afterwards (the TorchScript exporter
puts a wrapper's mode back recursively, which flipped an eval model to training).

How weights appear (dynamo exporter + optimizer, torch 2.13)
------------------------------------------------------------
- ``nn.Linear`` on a 2-D input: ``Gemm(x, W[out, in], b, transB=1)``; initializer keeps the name.
- ``nn.Linear`` on an input of rank > 2: ``MatMul(x, W^T)``; the optimizer folds the transpose into a
  NEW initializer ``[in, out]`` named ``val_<n>`` (a numpy *view* of the torch weight until written).
- HF GPT-2 ``Conv1D`` / ``torch.addmm(b, x, W[in, out])``: ``Gemm(x, W, b, transB=0)``, name kept.
- ``nn.Conv*d``: ``Conv(x, W[out, in/groups, *k], b, group=g)``; a following eval-mode ``BatchNorm``
  is folded into the conv weight (values scaled per output channel, axis 0: zeros, and any N:M
  pattern along K = axis 1, survive the fold).

Initializers back to parameters (:func:`map_initializers`), exact first
-----------------------------------------------------------------------
``identity`` (the initializer IS the parameter's tensor), ``view`` (a transposed numpy view of its
memory), ``folded_from`` (the optimizer's provenance metadata names one parameter; values compared),
``value`` (equal bytes, or equal bytes transposed: a hash lookup), and ``scaled_rows`` (BatchNorm
folding: the same zero pattern, exactly, and each output row a multiple of the parameter's row,
``|init - s_o * W_o| <= rtol * |init|`` with ``rtol`` from :func:`~graphprune.runtime.compare.tolerance_for`
of the weight's dtype). Zeros are exact under scaling by a finite non-zero ``s_o``; the row test is
the only approximate one, and only confirms a candidate the zero pattern already picked.

Dynamic axes
------------
``dynamic=True`` makes axis 0 of every tensor input whose size is the example batch dynamic
(``torch.export.Dim.AUTO``: where the model fixes the size, export keeps it static and a note says
so). An example batch of 1 is traced at batch 2 (rows repeated) because ``torch.export``
specializes sizes 0 and 1. ``dynamic_axes={"input_ids": {1: "sequence"}}`` adds more. Symbolic
dims are renamed after the axes (``batch``, ``sequence``) in the ONNX; the same exported program
is kept (:attr:`ExportRecord.exported_program`) so ``pruned.pt2`` carries the same dynamic dims.

Memory
------
Beyond 512 MiB of initializers the ONNX is never serialized into one protobuf in memory:
``onnx_ir.save`` writes the tensors one at a time into ``<name>.data`` (protobuf's 2 GiB limit makes
this necessary beyond 2 GB; below it, the in-memory protobuf of a single-file ONNX would cost twice
the weight bytes). Files go to a temporary folder beside ``path`` and are renamed into place (data
file first). ``onnx.checker`` runs on
the path. Free space is checked before writing (:class:`OutputError`, exit 7).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.utils._pytree as pytree

from graphprune.config import check_dynamic_axes
from graphprune.errors import ConfigError, InputError, OutputError, UnsupportedModelError, ValidationError
from graphprune.io.files import atomic_write
from graphprune.runtime.external_data import tensor_nbytes

__all__ = [
    "EXPORTERS",
    "ExportOptions",
    "ExportRecord",
    "export_onnx",
    "forward_input_names",
    "map_initializers",
    "needs_external_data",
    "output_names",
    "save_onnx",
]

log = logging.getLogger(__name__)

# Above this many bytes of initializers the weights are written to an external data file, tensor by
# tensor. Beyond 2 GiB protobuf leaves no choice; below it, one self-contained file is serialized in
# memory first, which costs about twice the weight bytes (a 1.25 GB model peaked at +2.5 GB), so
# anything above 512 MiB is written streamed.
_EXTERNAL_DATA_BYTES = 512 * 1024 * 1024
_QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "torch.fx.experimental.symbolic_shapes")
EXPORTERS: tuple[str, ...] = ("dynamo", "dynamo-relaxed", "torchscript")
_FOLDED_FROM = "pkg.onnxscript.optimizer.folded_from"


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """How the model is presented to the exporter (the CLI's ``--dtype``, ``--dynamic-batch``,
    ``--dynamic-axis name:dim``, ``--input-name``).

    ``dtype``: cast graphprune's copy and the floating inputs to this dtype first (``float32``,
    ``float16``, ``bfloat16``); None keeps the model's. ``dynamic_batch``: axis 0 of the inputs is
    dynamic in the ONNX and the pt2 where the model allows (a note where it does not).
    ``dynamic_axes``: more dynamic axes, ``{"input_ids": {1: "sequence"}}``. ``input_names``: names
    of the positional example inputs (forward parameter names). ``exporters``: which of
    :data:`EXPORTERS` to try, in order.
    """

    dtype: str | None = None
    dynamic_batch: bool = True
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    input_names: tuple[str, ...] | None = None
    exporters: tuple[str, ...] = EXPORTERS

    def __post_init__(self) -> None:
        if self.dtype is not None:
            from graphprune.runtime.precision import resolve_dtype

            resolve_dtype(self.dtype)
        if not isinstance(self.dynamic_batch, bool):
            raise ConfigError(f"ExportOptions.dynamic_batch must be True or False, got {self.dynamic_batch!r}")
        object.__setattr__(self, "dynamic_axes", check_dynamic_axes(self.dynamic_axes, owner="ExportOptions"))
        if self.input_names is not None:
            object.__setattr__(self, "input_names", tuple(str(n) for n in self.input_names))
        bad = [e for e in self.exporters if e not in EXPORTERS]
        if bad or not self.exporters:
            raise ConfigError(f"ExportOptions.exporters must be a non-empty subset of {', '.join(EXPORTERS)}, got {self.exporters!r}")
        object.__setattr__(self, "exporters", tuple(self.exporters))

    @classmethod
    def from_config(cls, config: Any) -> ExportOptions:
        """The export options of a :class:`~graphprune.config.CompileConfig` (its dtype, dynamic_* and input_names)."""
        return cls(dtype=config.dtype, dynamic_batch=config.dynamic_batch, dynamic_axes=config.dynamic_axes, input_names=config.input_names)

    @staticmethod
    def parse_dynamic_axis(spec: str) -> dict[str, dict[int, str]]:
        """``"input_ids:1"`` or ``"input_ids:1=sequence"`` (CLI ``--dynamic-axis``) -> ``{"input_ids": {1: ...}}``."""
        m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*:\s*(\d+)\s*(?:=\s*([A-Za-z_]\w*))?\s*", spec)
        if not m:
            raise ConfigError(f"--dynamic-axis {spec!r}: expected NAME:AXIS or NAME:AXIS=LABEL, e.g. input_ids:1=sequence")
        name, axis, label = m.group(1), int(m.group(2)), m.group(3)
        return {name: {axis: label or f"{name}_dim{axis}"}}

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "dynamic_batch": self.dynamic_batch,
            "dynamic_axes": {k: {str(a): v for a, v in d.items()} for k, d in self.dynamic_axes.items()},
            "input_names": list(self.input_names) if self.input_names is not None else None,
            "exporters": list(self.exporters),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExportOptions:
        axes = {k: {int(a): v for a, v in dims.items()} for k, dims in dict(d.get("dynamic_axes") or {}).items()}
        names = d.get("input_names")
        return cls(
            dtype=d.get("dtype"),
            dynamic_batch=d.get("dynamic_batch", True),
            dynamic_axes=axes,
            input_names=tuple(names) if names is not None else None,
            exporters=tuple(d.get("exporters") or EXPORTERS),
        )


@dataclass
class ExportRecord:
    """What :func:`export_onnx` wrote and how."""

    path: Path
    exporter: str  # the exporter that succeeded: "dynamo", "dynamo-relaxed" or "torchscript"
    input_names: list[str]
    output_names: list[str]
    seconds: float
    notes: list[str] = field(default_factory=list)
    opset: int | None = None
    # ONNX initializer name -> {"param": fqn, "transposed": bool, "same_values": bool, "how": str}
    initializer_sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # {"exporter", "ok", "error", "seconds"}
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)  # ONNX input/output -> {axis: dim name}
    external_data: list[str] = field(default_factory=list)  # data files written beside the model
    initializer_bytes: int = 0
    dtype: str | None = None  # the dominant floating type of the initializers
    exported_program: Any = field(default=None, repr=False)  # the torch.export program (dynamo exporters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "exporter": self.exporter,
            "input_names": list(self.input_names),
            "output_names": list(self.output_names),
            "seconds": self.seconds,
            "notes": list(self.notes),
            "opset": self.opset,
            "initializer_sources": dict(self.initializer_sources),
            "attempts": [dict(a) for a in self.attempts],
            "dynamic_axes": {k: {str(a): v for a, v in d.items()} for k, d in self.dynamic_axes.items()},
            "external_data": list(self.external_data),
            "initializer_bytes": self.initializer_bytes,
            "dtype": self.dtype,
        }


# ---- helpers ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet(buffer: io.StringIO) -> Iterator[None]:
    """Capture stdout/stderr, warnings and exporter log records below ERROR."""
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _describe(e: BaseException) -> str:
    """First line of an exception and of its root cause, without terminal colours."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen and len(parts) < 3:
        seen.add(id(cur))
        text = _ANSI.sub("", str(cur)).strip()
        first = text.splitlines()[0] if text else ""
        parts.append(f"{type(cur).__name__}: {first[:500]}")
        cur = cur.__cause__ or cur.__context__
    return " <- ".join(parts)


_SOURCE_LINE = re.compile(r"# File: (\S+ in \w+), code: (.*)")


def _data_dependent_hint(e: BaseException | None, output: str) -> str:
    """For a branch on tensor values: where it is in the user's code and what to do, in one line."""
    chain = " ".join(f"{type(c).__name__} {c}" for c in (e, getattr(e, "__cause__", None), getattr(e, "__context__", None)) if c is not None)
    if "DataDependent" not in chain and "data-dependent" not in chain:
        return ""
    lines = _SOURCE_LINE.findall(output)
    where = f" at {lines[-1][0]} ({lines[-1][1].strip()[:120]})" if lines else ""
    return (f"; the model branches on tensor values{where}, which torch.export cannot capture: "
            "use torch.cond or make the branch independent of the data")


def _root_line(e: BaseException) -> str:
    """One line: the exception's first line and its root cause's (what an attempt record keeps)."""
    text = _describe(e).replace("\n", " ")
    text = re.sub(r"\s*Next steps:\s*(?=<-|$)", " ", text)  # the dynamo exporter's boilerplate
    text = re.sub(r"\s*This is step (\d)/3 of exporting the model to ONNX\.", r" (step \1/3)", text)
    return re.sub(r"\s+", " ", text).strip()[:700]


def _tail(text: str, limit: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def forward_input_names(model: Any, example_inputs: Sequence[Any]) -> list[str] | None:
    """Names of the tensor example inputs (``None`` inputs skipped) from the forward signature, or None.

    These are the ONNX graph's inputs, in order: the exporters drop ``None`` and non-tensor inputs.
    Names cannot be read off a signature with ``*args``/keyword-only parameters in the used range,
    or for nested inputs (a tuple of tensors as one argument): None then.
    """
    if not all(a is None or isinstance(a, (torch.Tensor, bool, int, float, str)) for a in example_inputs):
        return None
    names: list[str] | None = None
    if isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        try:
            fn = model.forward if isinstance(model, torch.jit.ScriptModule) else model
            schema: Any = getattr(fn, "schema", None)
            names = [a.name for a in schema.arguments]
            if isinstance(model, torch.jit.ScriptModule) and names:
                names = names[1:]  # self
        except (AttributeError, RuntimeError, TypeError):
            return None
    else:
        adapter = getattr(model, "_graphprune_input_names", None)
        if adapter is not None:
            names = list(adapter)
        else:
            fn = model.module().forward if isinstance(model, torch.export.ExportedProgram) else getattr(model, "forward", model)
            try:
                params = list(inspect.signature(fn).parameters.values())
            except (TypeError, ValueError):
                return None
            if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY) for p in params[: len(example_inputs)]):
                return None
            names = [p.name for p in params]
    if names is None or len(names) < len(example_inputs):
        return None
    return [n for n, a in zip(names, example_inputs) if isinstance(a, torch.Tensor)]


def output_names(tree: Any) -> list[str]:
    """ONNX output names for a model output pytree: ``logits``, ``last_hidden_state``, ``output_0``, ...

    Leaves are taken in ``torch.utils._pytree`` order, tensors only (what the exporters keep). Dict and
    ``ModelOutput`` keys become the names (nested keys joined with ``.``), sequence positions
    ``output_<i>``; a bare tensor is ``output``. Names are made unique.
    """
    leaves, _ = pytree.tree_flatten_with_path(tree)
    out: list[str] = []
    for path, leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            continue
        parts: list[str] = []
        for k in path:
            if isinstance(k, pytree.MappingKey):
                parts.append(str(k.key))
            elif isinstance(k, pytree.GetAttrKey):
                parts.append(str(k.name))
            elif isinstance(k, pytree.SequenceKey):
                parts.append(str(k.idx) if parts else f"output_{k.idx}")
            else:
                parts.append(re.sub(r"\W", "", str(k)) or "x")
        out.append(".".join(parts) or "output")
    seen: dict[str, int] = {}
    unique = []
    for n in out:
        if n in seen:
            seen[n] += 1
            n = f"{n}_{seen[n]}"
        else:
            seen[n] = 0
        unique.append(n)
    return unique


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write an in-memory ``model`` to ``path`` atomically (a temporary file beside it, then a rename).

    Models with more than 512 MiB of initializers are written with external data in
    ``<name>.data`` beside the file; the data file is renamed into place before the model file.
    (:func:`export_onnx` does not build an in-memory ModelProto; this is for callers that have one.)
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write ONNX to {path}: it is a directory; give a file name such as {path / 'model.onnx'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the directory {path.parent} for {path.name}: {e}") from e
    try:
        if not needs_external_data(model):
            atomic_write(path, lambda tmp: onnx.save_model(model, tmp))
            return
        with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmpdir:
            tmp = Path(tmpdir) / path.name
            data_name = f"{path.name}.data"
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name)
            os.replace(Path(tmpdir) / data_name, path.parent / data_name)
            os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write ONNX file {path}: {e}") from e


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the initializers are too large for one protobuf (saved with external data)."""
    return sum(tensor_nbytes(t) for t in model.graph.initializer) > _EXTERNAL_DATA_BYTES


# ---- dynamic shapes ---------------------------------------------------------------------------
@dataclass
class _DynamicPlan:
    spec: tuple[Any, ...] | None  # torch.export dynamic_shapes, one entry per positional input
    trace_args: tuple[Any, ...]  # example inputs to trace with (batch 1 repeated to 2)
    wanted: dict[str, dict[int, str]]  # input name -> {axis: label}
    batch: int | None


def _plan_dynamic(
    args: tuple[Any, ...], names: Sequence[str] | None, dynamic: bool, dynamic_axes: Mapping[str, Mapping[int, str]]
) -> _DynamicPlan:
    tensor_pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    tnames = list(names) if names is not None and len(names) == len(tensor_pos) else [f"input_{i}" for i in tensor_pos]
    by_pos = dict(zip(tensor_pos, tnames))
    unknown = [n for n in dynamic_axes if n not in tnames]
    if unknown:
        raise ConfigError(f"dynamic axis for {unknown[0]!r}: the model's tensor inputs are {', '.join(tnames) or 'none'}")
    batch = next((int(args[i].shape[0]) for i in tensor_pos if args[i].dim() > 0), None)
    wanted: dict[str, dict[int, str]] = {}
    for i in tensor_pos:
        a = args[i]
        axes: dict[int, str] = {}
        if dynamic and a.dim() > 0 and batch is not None and int(a.shape[0]) == batch:
            axes[0] = "batch"
        for ax, label in dynamic_axes.get(by_pos[i], {}).items():
            if ax >= a.dim():
                raise ConfigError(f"dynamic axis {by_pos[i]}:{ax}: the input has {a.dim()} axes (shape {list(a.shape)})")
            axes[ax] = label
        if axes:
            wanted[by_pos[i]] = axes
    if not wanted:
        return _DynamicPlan(None, args, {}, batch)
    auto = torch.export.Dim.AUTO
    spec = tuple(
        {ax: auto for ax in wanted.get(by_pos.get(i, ""), {})} or None if isinstance(a, torch.Tensor) else None
        for i, a in enumerate(args)
    )
    trace_args = args
    if batch == 1 and any(0 in d and d[0] == "batch" for d in wanted.values()):
        trace_args = tuple(
            a.repeat(2, *([1] * (a.dim() - 1))) if i in by_pos and 0 in wanted.get(by_pos[i], {}) else a
            for i, a in enumerate(args)
        )
    return _DynamicPlan(spec, trace_args, wanted, batch)


def _torch_export(model: Any, args: tuple[Any, ...], plan: _DynamicPlan, notes: list[str]) -> tuple[Any, tuple[Any, ...], bool]:
    """torch.export with the planned dynamic shapes; static (with a note) where export refuses them."""
    if isinstance(model, torch.export.ExportedProgram):
        if plan.spec is not None:
            notes.append("dynamic axes not applied: an ExportedProgram carries its own dynamic shapes")
        return model, args, False
    with torch.no_grad():
        if plan.spec is not None:
            try:
                return torch.export.export(model, plan.trace_args, dynamic_shapes=plan.spec, strict=False), plan.trace_args, True
            except Exception as e:
                notes.append(f"dynamic axes refused by torch.export ({_root_line(e)[:300]}); exported with static shapes")
        return torch.export.export(model, args, strict=False), args, False


def _relax_views(ep: Any) -> int:
    """Copy the input of every ``aten.view`` / ``aten.reshape`` to contiguous memory first (in place on
    ``ep``'s graph); returns how many.

    The dynamo exporter decomposes with size-oblivious shape reasoning, under which the strides of
    a transposed tensor can be judged viewable when they are not (HF T5 and Swin: ``transpose(1, 2)``
    then ``reshape``); the decomposition then fails with "Cannot view a tensor ...". An explicit
    ``clone(memory_format=contiguous_format)`` makes every view legal whatever the reasoning; in ONNX a
    clone is nothing (Reshape has no strides), so the exported graph is the same.
    """
    g = ep.graph_module.graph
    count = 0
    for node in list(g.nodes):
        if node.op != "call_function" or node.target not in (torch.ops.aten.view.default, torch.ops.aten.reshape.default):
            continue
        src = node.args[0]
        with g.inserting_before(node):
            clone = g.call_function(torch.ops.aten.clone.default, (src,), {"memory_format": torch.contiguous_format})
        clone.meta = dict(src.meta) if hasattr(src, "meta") else {}
        node.replace_input_with(src, clone)
        count += 1
    if count:
        ep.graph_module.recompile()
    return count


def _spec_output_names(ep: Any) -> list[str] | None:
    try:
        spec = ep.call_spec.out_spec
        tree = pytree.tree_unflatten([torch.empty(0)] * spec.num_leaves, spec)
        return output_names(tree)
    except Exception:
        return None


# ---- exporters ----------------------------------------------------------------------------------
def _export_dynamo(
    model: Any, args: tuple[Any, ...], *, plan: _DynamicPlan, opset: int | None, input_names: Sequence[str] | None,
    relaxed_from: Any, notes: list[str], state: dict[str, Any],
) -> tuple[Any, Any]:
    """(onnx_ir model, exported program). ``relaxed_from``: the exported program of a failed attempt to
    relax; ``state["ep"]`` keeps this attempt's exported program for a relaxed retry."""
    if relaxed_from is not None:
        ep = relaxed_from
        n = _relax_views(ep)
        if n == 0:
            raise UnsupportedModelError("nothing to relax: the exported program has no aten.view/reshape nodes")
        notes.append(f"dynamo-relaxed: the inputs of {n} view/reshape node(s) made contiguous before decomposition")
    else:
        ep, _, _ = _torch_export(model, args, plan, notes)
    kwargs: dict[str, Any] = {"dynamo": True, "verbose": False, "optimize": False, "report": False}
    if opset is not None:
        kwargs["opset_version"] = opset
    n_in = sum(1 for s in ep.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT)
    if input_names is not None and len(input_names) == n_in:
        kwargs["input_names"] = list(input_names)
    outs = _spec_output_names(ep)
    if outs:
        kwargs["output_names"] = outs
    state["ep"] = ep
    program = torch.onnx.export(ep, args, None, **kwargs)
    if program is None:  # pragma: no cover - torch contract
        raise RuntimeError("torch.onnx.export returned no program")
    _optimize(program.model, notes)
    return program.model, ep


# Graphs with more nodes than this skip onnxscript's pattern rewriter (its matcher is super-linear:
# 31 s on the 1,400-node graph of a 22-layer Llama, where it removed 53 Slice/Concat nodes that
# onnxruntime and TensorRT simplify themselves). Constant folding (which folds weight transposes)
# and the cleanup passes run on every graph.
_REWRITE_MAX_NODES = 1000


def _optimize(model: Any, notes: list[str]) -> None:
    """What ``torch.onnx.export(optimize=True)`` does, minus the pattern rewriter on large graphs."""
    import onnx_ir as ir
    import onnxscript.optimizer as onnx_optimizer
    from onnx_ir.passes import common as common_passes

    nodes = sum(1 for _ in model.graph)
    if nodes <= _REWRITE_MAX_NODES:
        import onnxscript.rewriter.onnx_fusions as onnx_fusions

        onnx_optimizer.optimize_ir(model)
        onnx_fusions.fuse(model)
        return
    common_passes.InlinePass()(model)
    for _ in range(2):
        changed = onnx_optimizer.fold_constants_ir(model).modified
        common_passes.RemoveUnusedNodesPass()(model)
        if not changed:
            break
    ir.passes.Sequential(
        common_passes.RemoveUnusedFunctionsPass(),
        common_passes.RemoveUnusedOpsetsPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.LiftSubgraphInitializersToMainGraphPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    )(model)
    notes.append(
        f"ONNX optimizer: constant folding and cleanup only; the pattern rewriter was skipped on this "
        f"{nodes}-node graph (more than {_REWRITE_MAX_NODES}: its time grows faster than the graph)"
    )


def _export_torchscript(
    model: Any, args: tuple[Any, ...], *, plan: _DynamicPlan, opset: int | None, input_names: Sequence[str] | None,
    work_dir: Path,
) -> Any:
    import onnx_ir as ir

    if isinstance(model, torch.export.ExportedProgram):
        raise UnsupportedModelError("the TorchScript exporter cannot take an ExportedProgram")
    kwargs: dict[str, Any] = {"dynamo": False, "verbose": False, "do_constant_folding": True}
    if opset is not None:
        kwargs["opset_version"] = opset
    has_none = any(a is None for a in args) and all(a is None or isinstance(a, torch.Tensor) for a in args)
    targs = tuple(a for a in args if a is not None) if has_none else args
    if input_names is not None:
        kwargs["input_names"] = list(input_names)
    with torch.no_grad():
        out = model(*args)
    onames = output_names(out)
    if onames:
        kwargs["output_names"] = onames
    if plan.wanted and input_names is not None:
        axes: dict[str, dict[int, str]] = {n: dict(d) for n, d in plan.wanted.items()}
        if any(0 in d and d[0] == "batch" for d in plan.wanted.values()):
            for o in onames:
                axes.setdefault(o, {})[0] = "batch"
        kwargs["dynamic_axes"] = axes
    tmp = work_dir / "torchscript.onnx"
    if has_none:
        # None inputs cannot be traced: a wrapper takes the tensors and puts the Nones back in place
        positions = [i for i, a in enumerate(args) if a is not None]

        class _Drop(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *xs: Any) -> Any:
                full: list[Any] = [None] * len(args)
                for p, x in zip(positions, xs):
                    full[p] = x
                return self.inner(*full)

        torch.onnx.export(_Drop(model).train(bool(getattr(model, "training", False))), targs, str(tmp), **kwargs)
    else:
        torch.onnx.export(model, args, str(tmp), **kwargs)
    return ir.load(str(tmp))


def _cleanup_ir(model: Any) -> None:
    """Remove unused nodes and sort topologically (no folding, no renaming: the audit reads names)."""
    from onnx_ir.passes import common as common_passes

    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.TopologicalSortPass()(model)


def _rename_dims(model: Any, wanted: Mapping[str, Mapping[int, str]]) -> dict[str, dict[int, str]]:
    """Rename the symbolic dims of the wanted input axes (``s43`` -> ``batch``) everywhere in the graph.

    A size torch.export specialized comes out of the dynamo exporter as a symbolic dim whose name is
    the number (``SymbolicDim('2')``); those become plain sizes. Returns the dynamic axes of the
    graph's inputs and outputs after renaming.
    """
    import onnx_ir as ir

    mapping: dict[str, str] = {}
    for v in model.graph.inputs:
        for ax, label in wanted.get(v.name, {}).items():
            if v.shape is not None and ax < len(v.shape):
                d = v.shape[ax]
                if isinstance(d, ir.SymbolicDim) and d.value is not None and not str(d.value).isdigit():
                    mapping.setdefault(str(d.value), label)

    def new_dim(d: Any) -> Any:
        if isinstance(d, ir.SymbolicDim) and d.value is not None:
            if str(d.value).isdigit():
                return int(d.value)
            return mapping.get(str(d.value), d)
        return d

    def fix(v: Any) -> None:
        if v is None or v.shape is None:
            return
        dims = [new_dim(d) for d in v.shape]
        if any(a is not b for a, b in zip(dims, v.shape)):
            v.shape = ir.Shape(dims)

    for v in [*model.graph.inputs, *model.graph.outputs]:
        fix(v)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for o in node.outputs:
            fix(o)
    out: dict[str, dict[int, str]] = {}
    for v in [*model.graph.inputs, *model.graph.outputs]:
        if v.shape is None:
            continue
        axes = {i: str(d.value) for i, d in enumerate(v.shape) if isinstance(d, ir.SymbolicDim) and d.value is not None}
        if axes:
            out[v.name] = axes
    return out


# ---- initializers back to parameters ---------------------------------------------------------------
def _named_tensors(model: Any) -> dict[str, torch.Tensor]:
    if isinstance(model, torch.export.ExportedProgram):
        return {k: v for k, v in model.state_dict.items() if isinstance(v, torch.Tensor)}
    if isinstance(model, torch.nn.Module):
        out: dict[str, torch.Tensor] = dict(model.named_parameters())
        out.update(dict(model.named_buffers()))
        return out
    return {}


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy()
    return t.numpy()


def _digest(arr: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(arr).tobytes(), digest_size=16).hexdigest()


def _zero_digest(arr: np.ndarray) -> str:
    return hashlib.blake2b(np.packbits(np.ascontiguousarray(arr) == 0).tobytes(), digest_size=16).hexdigest()


def _rows_scaled(init: np.ndarray, ref: np.ndarray, rtol: float) -> bool:
    """``init[o] == s_o * ref[o]`` for every output row o (axis 0), zeros exactly where ref has them."""
    if init.shape != ref.shape:
        return False
    a = init.reshape(init.shape[0], -1).astype(np.float64)
    b = ref.reshape(ref.shape[0], -1).astype(np.float64)
    if not np.array_equal(a == 0, b == 0):
        return False
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(b != 0, a / b, np.nan)
    s = np.nanmedian(np.where(np.isnan(ratio).all(1, keepdims=True), 0.0, ratio), axis=1, keepdims=True)
    return bool(np.all(np.abs(a - s * b) <= rtol * np.abs(a) + 1e-30))


class _ValueIndex:
    """Parameters by exact value (and transposed value) and by zero pattern, built lazily by shape."""

    def __init__(self, named: dict[str, torch.Tensor]) -> None:
        self.named = {k: v for k, v in named.items() if v.dim() >= 2}
        self._built: set[tuple[int, ...]] = set()
        self.exact: dict[tuple[tuple[int, ...], str], tuple[str, bool]] = {}
        self.zeros: dict[tuple[tuple[int, ...], str], list[str]] = {}

    def _build(self, shape: tuple[int, ...]) -> None:
        if shape in self._built:
            return
        self._built.add(shape)
        for fqn, t in self.named.items():
            ts = tuple(t.shape)
            if ts == shape:
                arr = _as_numpy(t)
                self.exact.setdefault((shape, _digest(arr)), (fqn, False))
                self.zeros.setdefault((shape, _zero_digest(arr)), []).append(fqn)
            if len(ts) == 2 and ts[::-1] == shape:
                self.exact.setdefault((shape, _digest(_as_numpy(t).T)), (fqn, True))

    def lookup(self, arr: np.ndarray) -> dict[str, Any] | None:
        from graphprune.runtime.compare import tolerance_for

        shape = tuple(arr.shape)
        self._build(shape)
        a = arr.astype(np.float32) if arr.dtype.name == "bfloat16" else arr
        hit = self.exact.get((shape, _digest(a)))
        if hit is not None:
            return {"param": hit[0], "transposed": hit[1], "same_values": True, "how": "value"}
        rtol = tolerance_for(arr.dtype.name if arr.dtype.name != "bfloat16" else "bfloat16").rtol
        for fqn in self.zeros.get((shape, _zero_digest(a)), []):
            if _rows_scaled(a, _as_numpy(self.named[fqn]), rtol):
                return {"param": fqn, "transposed": False, "same_values": False, "how": "scaled_rows"}
        return None


def map_initializers(model: Any, ir_model: Any) -> dict[str, dict[str, Any]]:
    """Map the ONNX initializers of rank >= 2 back to the model's parameters (see the module docstring).

    Returns ``{initializer: {"param", "transposed", "same_values", "how"}}`` for those found.
    """
    named = _named_tensors(model)
    if not named:
        return {}
    by_ptr: dict[int, list[str]] = {}
    for fqn, t in named.items():
        if t.numel() and t.device.type == "cpu":
            by_ptr.setdefault(t.data_ptr(), []).append(fqn)
    index = _ValueIndex(named)
    out: dict[str, dict[str, Any]] = {}
    for name, value in model_initializers(ir_model):
        tensor = value.const_value
        if tensor is None or len(tensor.shape) < 2:
            continue
        dims = tuple(int(d) for d in tensor.shape)
        raw = getattr(tensor, "raw", None)
        hit: dict[str, Any] | None = None
        if isinstance(raw, torch.Tensor) and raw.numel():
            same = [f for f in by_ptr.get(raw.data_ptr(), []) if tuple(named[f].shape) == dims]
            if same:
                same.sort(key=lambda f: f != name)  # the parameter of that name first (tied weights)
                hit = {"param": same[0], "transposed": False, "same_values": True, "how": "identity"}
                if len(same) > 1:
                    hit["aliases"] = same[1:]
        elif isinstance(raw, np.ndarray) and raw.size and raw.ndim == 2:
            ptr = raw.__array_interface__["data"][0]
            same = [
                f for f in by_ptr.get(ptr, [])
                if tuple(named[f].shape)[::-1] == dims
                and raw.strides == tuple(s * named[f].element_size() for s in named[f].stride()[::-1])
            ]
            if same:
                hit = {"param": same[0], "transposed": True, "same_values": True, "how": "view"}
                if len(same) > 1:
                    hit["aliases"] = same[1:]
        if hit is None:
            origin = value.meta.get(_FOLDED_FROM) if hasattr(value, "meta") else None
            cands = [name] + (sorted(origin) if origin and len(origin) == 1 else [])
            arr: np.ndarray | None = None
            for fqn in cands:
                cand = named.get(fqn)
                if cand is None or cand.dim() < 2:
                    continue
                for transposed in (False, True):
                    shape = tuple(cand.shape)[::-1] if transposed else tuple(cand.shape)
                    if shape != dims or (transposed and cand.dim() != 2):
                        continue
                    arr = np.asarray(tensor.numpy()) if arr is None else arr
                    ref = _as_numpy(cand).T if transposed else _as_numpy(cand)
                    a = arr.astype(np.float32) if arr.dtype.name == "bfloat16" else arr
                    if np.array_equal(a, ref):
                        how = "name" if fqn == name else "folded_from"
                        hit = {"param": fqn, "transposed": transposed, "same_values": True, "how": how}
                        break
                if hit is not None:
                    break
            if hit is None:
                arr = np.asarray(tensor.numpy()) if arr is None else arr
                hit = index.lookup(arr)
        if hit is not None:
            out[name] = hit
    return out


def model_initializers(ir_model: Any) -> list[tuple[str, Any]]:
    return [(name, v) for name, v in ir_model.graph.initializers.items()]


def _initializer_bytes(ir_model: Any) -> int:
    return sum(int(v.const_value.nbytes) for v in ir_model.graph.initializers.values() if v.const_value is not None)


def _dominant_dtype(ir_model: Any) -> str | None:
    sizes: dict[str, int] = {}
    for v in ir_model.graph.initializers.values():
        t = v.const_value
        if t is not None and t.dtype.is_floating_point():
            key = t.dtype.name.lower()
            sizes[key] = sizes.get(key, 0) + int(t.nbytes)
    if not sizes:
        return None
    name = max(sizes, key=lambda k: sizes[k])
    return {"float": "float32", "double": "float64"}.get(name, name)


# ---- writing ------------------------------------------------------------------------------------
def _contiguous_on_write(ir_model: Any) -> None:
    """Turn initializers that are strided numpy views (the folded weight transposes, views of the
    torch weights) into lazy tensors made contiguous by torch when written: one tensor at a time,
    about 3x faster than numpy writing a strided array element by element."""
    import onnx_ir as ir

    for value in ir_model.graph.initializers.values():
        t = value.const_value
        raw = getattr(t, "raw", None)
        if not isinstance(raw, np.ndarray) or raw.flags["C_CONTIGUOUS"] or raw.dtype.kind not in "fiub":
            continue

        def dense(raw: np.ndarray = raw, name: str | None = t.name) -> Any:
            return ir.Tensor(torch.from_numpy(raw).contiguous().numpy(), name=name)

        value.const_value = ir.LazyTensor(dense, dtype=t.dtype, shape=t.shape, name=t.name)


def _save_ir(ir_model: Any, path: Path, work_dir: Path, *, external: bool, progress: bool) -> list[str]:
    """Write the model into ``work_dir`` (tensor by tensor), then rename into place: data file first."""
    import onnx_ir as ir
    from tqdm.auto import tqdm

    tmp = work_dir / path.name
    data_name = f"{path.name}.data"
    _contiguous_on_write(ir_model)
    try:
        if external:
            n = len(ir_model.graph.initializers)
            with tqdm(total=n, desc=f"writing {path.name}", unit="tensor", disable=not progress, leave=False) as bar:
                ir.save(ir_model, str(tmp), external_data=data_name, callback=lambda *_: bar.update(), alignment=4096)
            os.replace(work_dir / data_name, path.parent / data_name)
            os.replace(tmp, path)
            return [data_name]
        ir.save(ir_model, str(tmp))
        os.replace(tmp, path)
        stale = path.parent / data_name
        if stale.exists():  # an external data file of an earlier export under this name is not ours any more
            stale.unlink()
        return []
    except OSError as e:
        raise OutputError(f"cannot write ONNX file {path}: {e}") from e


@contextlib.contextmanager
def _restore_modes(modes: list[tuple[Any, bool]]) -> Iterator[None]:
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


# ---- entry point ------------------------------------------------------------------------------
def export_onnx(
    model: Any,
    example_inputs: tuple[Any, ...],
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    dynamic: bool = False,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    exporters: Sequence[str] = EXPORTERS,
    external_data: bool | None = None,
    progress: bool = False,
) -> ExportRecord:
    """Export ``model`` to ONNX at ``path`` and return what was written.

    ``model``: ``nn.Module`` (incl. ``fx.GraphModule``) or ``ExportedProgram``, or a TorchScript
    module/function (TorchScript exporter only). ``example_inputs``: positional arguments (``None``
    allowed for skipped optional parameters). ``input_names``: the names of the tensor inputs
    (default: from the forward signature). ``dynamic``: axis 0 (batch) of the inputs dynamic where the
    model allows; ``dynamic_axes``: more (see the module docstring). ``exporters``: tried in order (a
    subset of :data:`EXPORTERS`). ``external_data``: force (True) or forbid (False) external data;
    default by size.

    Outputs are flattened in ``torch.utils._pytree`` order (what :mod:`graphprune.runtime.compare`
    uses) and named after the output's keys (:func:`output_names`). The file passes ``onnx.checker``
    and is written atomically.

    Raises :class:`UnsupportedModelError` when every exporter fails (one line per attempt, and the
    exporters' captured output), :class:`InputError` for an object that is not a model,
    :class:`ConfigError` for a dynamic axis naming no input, :class:`ValidationError` when the result
    fails ``onnx.checker``, :class:`OutputError` when ``path`` cannot be written or its filesystem
    has no room for the initializers.
    """
    from graphprune.runtime.resources import check_free_space

    path = Path(path)
    if isinstance(example_inputs, list):
        example_inputs = tuple(example_inputs)
    elif not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    is_script = isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction))
    if not is_script and not isinstance(model, (torch.nn.Module, torch.export.ExportedProgram)):
        raise InputError(
            f"cannot export an object of type {type(model).__name__} to ONNX; pass an nn.Module, "
            "fx.GraphModule, torch.export.ExportedProgram or TorchScript module"
        )
    if path.is_dir():
        raise OutputError(f"cannot write ONNX to {path}: it is a directory; give a file name such as {path / 'model.onnx'}")
    bad = [e for e in exporters if e not in EXPORTERS]
    if bad or not exporters:
        raise ConfigError(f"exporters must be a non-empty subset of {', '.join(EXPORTERS)}, got {list(exporters)!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the directory {path.parent} for {path.name}: {e}") from e
    notes: list[str] = []
    label = type(model).__name__
    if isinstance(model, torch.nn.Module) and model.training:
        notes.append("model was in training mode; exported as is (call .eval() for inference export)")
    names = list(input_names) if input_names is not None else forward_input_names(model, example_inputs)
    plan = _plan_dynamic(example_inputs, names, dynamic, dynamic_axes or {})
    order = ["torchscript"] if is_script else [e for e in exporters]
    if is_script and "torchscript" not in exporters:
        raise ConfigError(f"{label} is a TorchScript module: only the torchscript exporter can export it")
    attempts: list[dict[str, Any]] = []
    captured = io.StringIO()
    start = time.perf_counter()
    ir_model: Any = None
    ep: Any = None
    failed_ep: Any = None
    state: dict[str, Any] = {}
    decompose_failed = False
    stopped = ""
    last_error: BaseException | None = None
    exporter = ""
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(order) + 2, desc="export", unit="step", disable=not progress, leave=False)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmpdir, _restore_modes(modes), bar:
        work_dir = Path(tmpdir)
        for exporter in order:
            bar.update()
            if exporter == "dynamo-relaxed" and not (decompose_failed and failed_ep is not None):
                continue  # relaxing helps only with a failure in the decomposition step
            bar.set_postfix_str(exporter)
            t0 = time.perf_counter()
            try:
                with _quiet(captured):
                    if exporter == "torchscript":
                        ir_model = _export_torchscript(
                            model, example_inputs, plan=plan, opset=opset, input_names=names, work_dir=work_dir
                        )
                        ep = None
                    else:
                        state = {}
                        ir_model, ep = _export_dynamo(
                            model, example_inputs, plan=plan, opset=opset, input_names=names,
                            relaxed_from=failed_ep if exporter == "dynamo-relaxed" else None, notes=notes, state=state,
                        )
            except Exception as e:
                last_error = e
                err = _root_line(e)
                attempts.append({"exporter": exporter, "ok": False, "error": err, "seconds": time.perf_counter() - t0})
                log.info("ONNX exporter %s failed: %s", exporter, err)
                if exporter == "dynamo":
                    failed_ep = state.get("ep")
                    decompose_failed = "decompose" in err.lower()
                    if _data_dependent_hint(e, "") and len(order) > 1:
                        stopped = " (not retried with the tracing exporters: they would export one branch only)"
                        # a branch on tensor values: the TorchScript exporter would trace ONE branch and write an
                        # ONNX that is wrong for inputs taking the other, and parity on the example inputs would not see it
                        break
                continue
            attempts.append({"exporter": exporter, "ok": True, "error": None, "seconds": time.perf_counter() - t0})
            break
        if ir_model is None:
            output = _ANSI.sub("", captured.getvalue())
            if output.strip():  # the exporter's graph dumps: for -v, not for the one-line error
                log.debug("exporter output:\n%s", _tail(output))
            lines = "; ".join(f"{a['exporter']}: {a['error']}" for a in attempts)
            raise UnsupportedModelError(
                f"ONNX export of {label} failed with every exporter tried ({lines}){stopped}" + _data_dependent_hint(last_error, output)
            )
        bar.n = len(order)
        bar.set_postfix_str("write")
        _cleanup_ir(ir_model)
        dyn = _rename_dims(ir_model, plan.wanted)
        static = [f"{n}:{ax}" for n, axes in plan.wanted.items() for ax in axes if ax not in dyn.get(n, {})]
        if static:
            notes.append(
                f"dynamic axis {', '.join(static)} stayed static: the model fixes that size "
                "(torch.export specialized it); the ONNX takes the example's size there"
            )
        nbytes = _initializer_bytes(ir_model)
        big = nbytes > _EXTERNAL_DATA_BYTES if external_data is None else bool(external_data)
        check_free_space(path.parent, int(nbytes * 1.01) + (1 << 20), what=f"the ONNX of {label} ({'external data, ' if big else ''}initializers)")
        sources = map_initializers(model if ep is None else ep, ir_model) if not is_script else map_initializers(model, ir_model)
        data_files = _save_ir(ir_model, path, work_dir, external=big, progress=progress)
        bar.update()
        bar.set_postfix_str("onnx.checker")
        try:
            onnx.checker.check_model(str(path))
        except (onnx.checker.ValidationError, ValueError) as e:
            raise ValidationError(f"exported ONNX {path} fails onnx.checker: {str(e).splitlines()[0] if str(e) else e}") from e
        bar.update()
    seconds = time.perf_counter() - start
    renamed = [k for k, v in sources.items() if v["param"] != k]
    if renamed:
        notes.append(
            "exporter stored some weights under new names: "
            + ", ".join(f"{k}<-{sources[k]['param']}{'^T' if sources[k]['transposed'] else ''}" for k in renamed[:20])
            + (f" (+{len(renamed) - 20} more)" if len(renamed) > 20 else "")
        )
    changed = [k for k, v in sources.items() if not v["same_values"]]
    if changed:
        notes.append(
            "initializers whose values are a parameter's scaled per output channel (BatchNorm folded): "
            + ", ".join(f"{k}<-{sources[k]['param']}" for k in changed)
        )
    if exporter != "dynamo" and attempts and not attempts[0]["ok"]:
        notes.append(f"ONNX exported with the {exporter} exporter after {attempts[0]['exporter']} failed")
    opset_used = ir_model.opset_imports.get("", None)
    return ExportRecord(
        path=path,
        exporter=exporter,
        input_names=[v.name for v in ir_model.graph.inputs],
        output_names=[v.name for v in ir_model.graph.outputs],
        seconds=seconds,
        notes=notes,
        opset=int(opset_used) if opset_used is not None else None,
        initializer_sources=sources,
        attempts=attempts,
        dynamic_axes=dyn,
        external_data=data_files,
        initializer_bytes=nbytes,
        dtype=_dominant_dtype(ir_model),
        exported_program=ep,
    )
