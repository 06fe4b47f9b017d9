"""torch -> ONNX export, onnx-graphsurgeon cleanup, onnx.checker, atomic write.

Exporters
---------
- ``nn.Module`` / ``fx.GraphModule`` / ``ExportedProgram``: ``torch.onnx.export(..., dynamo=True)``
  (torch.export non-strict, then onnxscript, then onnxscript's optimizer). Its console chatter is
  captured; on failure the captured text is appended to the error.
- ``torch.jit.ScriptModule`` / ``ScriptFunction``: the TorchScript exporter (``dynamo=False``), which
  torch 2.13 still ships. The dynamo exporter cannot take scripted or traced modules.

How weights appear (dynamo exporter + optimizer, torch 2.13)
------------------------------------------------------------
- ``nn.Linear`` on a 2-D input: ``Gemm(x, W[out, in], b, transB=1)``; initializer keeps the
  parameter name (``fc1.weight``).
- ``nn.Linear`` on an input of rank > 2: ``MatMul(x, W^T) + Add``; the optimizer constant-folds the
  transpose into a NEW initializer ``[in, out]`` named ``val_<n>`` (the parameter name is lost).
  :attr:`ExportRecord.initializer_sources` maps it back (``{"val_0": {"param": "fc1.weight",
  "transposed": True, ...}}``), found by comparing values.
- HF GPT-2 ``Conv1D`` / ``torch.addmm(b, x, W[in, out])``: ``Gemm(x, W, b, transB=0)``, name kept.
  An all-zero bias may be folded away.
- ``nn.Conv*d``: ``Conv(x, W[out, in/groups, *k], b, group=g)``, name kept. In eval mode a following
  ``BatchNorm`` is folded into the conv, and the initializer KEEPS the conv's name with BN-scaled
  values (``same_values: False`` in ``initializer_sources``). Scaling is per output channel (axis 0),
  so zeros, and any N:M pattern along K (axis 1), survive the fold.

Cleanup is onnx-graphsurgeon ``cleanup()`` + ``toposort()`` only: no constant folding, no renaming,
no merging of initializers (the audit reads them back by name). Node ``metadata_props`` (module
scope, stack trace) that graphsurgeon drops are copied back by node name.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.utils._pytree as pytree
from onnx import numpy_helper

from graphprune.errors import InputError, OutputError, UnsupportedModelError, ValidationError
from graphprune.io.files import atomic_write

__all__ = ["ExportRecord", "export_onnx", "forward_input_names", "needs_external_data", "save_onnx"]

# Above this many bytes of initializers the model is saved with external data (protobuf's 2 GiB limit).
_EXTERNAL_DATA_BYTES = 1_800_000_000
_QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "torch.fx.experimental.symbolic_shapes")


@dataclass
class ExportRecord:
    """What :func:`export_onnx` wrote and how."""

    path: Path
    exporter: str  # "dynamo" or "torchscript"
    input_names: list[str]
    output_names: list[str]
    seconds: float
    notes: list[str] = field(default_factory=list)
    opset: int | None = None
    # ONNX initializer name -> {"param": fqn, "transposed": bool, "same_values": bool}
    initializer_sources: dict[str, dict[str, Any]] = field(default_factory=dict)

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


def _data_dependent_hint(e: BaseException, output: str) -> str:
    """For a branch on tensor values: where it is in the user's code and what to do, in one line."""
    chain = " ".join(f"{type(c).__name__} {c}" for c in (e, e.__cause__, e.__context__) if c is not None)
    if "DataDependent" not in chain and "data-dependent" not in chain:
        return ""
    lines = _SOURCE_LINE.findall(output)
    where = f" at {lines[-1][0]} ({lines[-1][1].strip()[:120]})" if lines else ""
    return (f"; the model branches on tensor values{where}, which torch.export cannot capture: "
            "use torch.cond or make the branch independent of the data")


def _tail(text: str, limit: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def forward_input_names(model: Any, example_inputs: Sequence[Any]) -> list[str] | None:
    """Names for the example inputs from the model's forward signature, or None when unclear.

    Only when every example input is a single tensor (no nesting, no ``*args``) can names be read
    off the signature.
    """
    if not all(isinstance(a, torch.Tensor) for a in example_inputs):
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
    return names[: len(example_inputs)]


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write ``model`` to ``path`` atomically (a temporary file beside it, then a rename).

    Models with more than ~1.8 GB of initializers are written with external data in
    ``<name>.data`` beside the file; the data file is renamed into place before the model file.
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
    return sum(_tensor_nbytes(t) for t in model.graph.initializer) > _EXTERNAL_DATA_BYTES


def _tensor_nbytes(t: onnx.TensorProto) -> int:
    if t.HasField("raw_data"):
        return len(t.raw_data)
    n = 1
    for d in t.dims:
        n *= d
    return n * 4


def _dynamic_shapes(example_inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    auto = torch.export.Dim.AUTO

    def spec(a: Any) -> Any:
        return {0: auto} if isinstance(a, torch.Tensor) and a.dim() > 0 else None

    return tuple(pytree.tree_map(spec, a) for a in example_inputs)


def _export_dynamo(
    model: Any, args: tuple[Any, ...], *, opset: int | None, input_names: Sequence[str] | None, dynamic: bool,
    notes: list[str],
) -> onnx.ModelProto:
    kwargs: dict[str, Any] = {"dynamo": True, "verbose": False, "optimize": True, "report": False}
    if opset is not None:
        kwargs["opset_version"] = opset
    if input_names is not None:
        kwargs["input_names"] = list(input_names)
    if dynamic:
        if isinstance(model, torch.export.ExportedProgram):
            notes.append("dynamic=True ignored: an ExportedProgram carries its own dynamic shapes")
        else:
            kwargs["dynamic_shapes"] = _dynamic_shapes(args)
    program = torch.onnx.export(model, args, None, **kwargs)
    if program is None:  # pragma: no cover - torch contract
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto


def _export_torchscript(
    model: Any, args: tuple[Any, ...], *, opset: int | None, input_names: Sequence[str] | None, dynamic: bool,
) -> onnx.ModelProto:
    kwargs: dict[str, Any] = {"dynamo": False, "verbose": False, "do_constant_folding": True}
    if opset is not None:
        kwargs["opset_version"] = opset
    if input_names is not None:
        kwargs["input_names"] = list(input_names)
        if dynamic:
            kwargs["dynamic_axes"] = {n: {0: f"{n}_batch"} for n in input_names}
    with tempfile.TemporaryDirectory(prefix="graphprune-ts-export-") as tmpdir:
        tmp = Path(tmpdir) / "model.onnx"
        torch.onnx.export(model, args, tmp, **kwargs)
        return onnx.load(str(tmp))


def _cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """graphsurgeon cleanup + toposort, keeping initializer names and node metadata."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    meta = {n.name: list(n.metadata_props) for n in model.graph.node if n.name and len(n.metadata_props)}
    for n in out.graph.node:
        if n.name in meta and not len(n.metadata_props):
            n.metadata_props.extend(meta[n.name])
    out.ir_version = model.ir_version
    out.producer_name = model.producer_name
    out.producer_version = model.producer_version
    if len(model.metadata_props) and not len(out.metadata_props):
        out.metadata_props.extend(model.metadata_props)
    return out


def _named_tensors(model: Any) -> dict[str, torch.Tensor]:
    if isinstance(model, torch.export.ExportedProgram):
        return {k: v for k, v in model.state_dict.items() if isinstance(v, torch.Tensor)}
    if isinstance(model, torch.nn.Module):
        out: dict[str, torch.Tensor] = dict(model.named_parameters())
        out.update(dict(model.named_buffers()))
        return out
    return {}


def _initializer_sources(model: Any, proto: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Map ONNX weight initializers back to parameters by name, or by value (possibly transposed)."""
    named = _named_tensors(model)
    if not named:
        return {}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for fqn, t in named.items():
        if t.dim() >= 2:
            by_shape.setdefault(tuple(t.shape), []).append(fqn)
    out: dict[str, dict[str, Any]] = {}
    for init in proto.graph.initializer:
        dims = tuple(int(d) for d in init.dims)
        if len(dims) < 2:
            continue
        arr: np.ndarray | None = None
        if init.name in named and tuple(named[init.name].shape) == dims:
            arr = numpy_helper.to_array(init)
            same = _equal(named[init.name], arr, transposed=False)
            out[init.name] = {"param": init.name, "transposed": False, "same_values": same}
            continue
        for transposed, shape in ((False, dims), (True, dims[::-1] if len(dims) == 2 else None)):
            if shape is None:
                continue
            for fqn in by_shape.get(shape, ()):
                arr = numpy_helper.to_array(init) if arr is None else arr
                if _equal(named[fqn], arr, transposed=transposed):
                    out[init.name] = {"param": fqn, "transposed": transposed, "same_values": True}
                    break
            if init.name in out:
                break
    return out


def _equal(t: torch.Tensor, arr: np.ndarray, *, transposed: bool) -> bool:
    ref = t.detach().cpu()
    if transposed:
        ref = ref.T
    if ref.dtype == torch.bfloat16 or arr.dtype.name == "bfloat16":
        return bool(np.array_equal(ref.float().numpy(), np.asarray(arr, dtype=np.float32)))
    return bool(np.array_equal(ref.numpy(), arr))


# ---- entry point ------------------------------------------------------------------------------
def export_onnx(
    model: Any,
    example_inputs: tuple[Any, ...],
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    dynamic: bool = False,
) -> ExportRecord:
    """Export ``model`` to ONNX at ``path`` and return what was written.

    ``model``: ``nn.Module`` (incl. ``fx.GraphModule``) or ``ExportedProgram`` (dynamo exporter), or a
    TorchScript module/function (TorchScript exporter). ``example_inputs``: positional arguments.
    ``input_names``: default from the forward signature (the dynamo exporter does this itself).
    ``dynamic``: make axis 0 (batch) of every tensor input dynamic (``Dim.AUTO`` with dynamo, which
    keeps it static where the model forces it, e.g. an example batch of 1; a note says so).
    Other axes stay static (TensorRT wants static channel dims); export an ``ExportedProgram`` with
    your own ``dynamic_shapes`` for more.

    Outputs are flattened in ``torch.utils._pytree`` order, which :mod:`graphprune.runtime.compare`
    uses too. The file passes ``onnx.checker`` and is written atomically.

    Raises :class:`UnsupportedModelError` when the exporter fails (captured exporter output
    appended), :class:`InputError` for an object that is not a model, :class:`ValidationError`
    when the result fails ``onnx.checker``, :class:`OutputError` when ``path`` cannot be written.
    """
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
    notes: list[str] = []
    if isinstance(model, torch.nn.Module) and model.training:
        notes.append("model was in training mode; exported as is (call .eval() for inference export)")
    names = list(input_names) if input_names is not None else None
    if names is None and is_script:
        names = forward_input_names(model, example_inputs)
    exporter = "torchscript" if is_script else "dynamo"
    captured = io.StringIO()
    start = time.perf_counter()
    try:
        with _quiet(captured):
            if is_script:
                proto = _export_torchscript(model, example_inputs, opset=opset, input_names=names, dynamic=dynamic)
            else:
                proto = _export_dynamo(
                    model, example_inputs, opset=opset, input_names=names, dynamic=dynamic, notes=notes
                )
    except Exception as e:
        output = _ANSI.sub("", captured.getvalue())
        if output.strip():  # the exporter's graph dumps: for -v, not for the one-line error
            logging.getLogger("graphprune").debug("exporter output:\n%s", _tail(output))
        raise UnsupportedModelError(
            f"ONNX export of {type(model).__name__} with the {exporter} exporter failed: {_describe(e)}"
            + _data_dependent_hint(e, output)
        ) from e
    proto = _cleanup(proto)
    big = needs_external_data(proto)
    try:
        if not big:
            onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ValidationError(f"exported ONNX for {type(model).__name__} fails onnx.checker: {e}") from e
    save_onnx(proto, path)
    if big:
        try:
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as e:
            raise ValidationError(f"exported ONNX {path} fails onnx.checker: {e}") from e
    seconds = time.perf_counter() - start
    if dynamic:
        static = [i.name for i in proto.graph.input if i.type.tensor_type.shape.dim
                  and i.type.tensor_type.shape.dim[0].HasField("dim_value")]
        if static:
            notes.append(f"dynamic=True but axis 0 stayed static for input(s) {', '.join(static)}")
    sources = _initializer_sources(model, proto)
    renamed = [k for k, v in sources.items() if v["param"] != k]
    if renamed:
        notes.append(
            "exporter stored some weights under new names (transposed copies): "
            + ", ".join(f"{k}<-{sources[k]['param']}{'^T' if sources[k]['transposed'] else ''}" for k in renamed)
        )
    changed = [k for k, v in sources.items() if not v["same_values"]]
    if changed:
        notes.append("initializers whose values differ from the parameter of that name (e.g. BatchNorm folded): " + ", ".join(changed))
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return ExportRecord(
        path=path,
        exporter=exporter,
        input_names=[i.name for i in proto.graph.input],
        output_names=[o.name for o in proto.graph.output],
        seconds=seconds,
        notes=notes,
        opset=opset_used,
        initializer_sources=sources,
    )
