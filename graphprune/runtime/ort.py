"""onnxruntime on CPU: sessions, runs, and torch-vs-ONNX parity.

Sessions always use ``intra_op_num_threads=threads`` (2 by default), ``inter_op_num_threads=1``,
``ORT_ENABLE_ALL`` and ``CPUExecutionProvider`` (see BENCHMARKING.md). onnxruntime is imported
lazily; a missing install raises :class:`~graphprune.errors.DependencyError`. Files are checked
with ``onnx.checker`` before onnxruntime parses them.

Initializer overrides: ``initializers={name: array}`` replaces stored weights for one session via
``SessionOptions.add_initializer`` (the file is not touched). This is how a file pruned in place is
compared with its dense original under the same masks.

onnxruntime quirk (1.32, found here): the layout optimizations of ``ORT_ENABLE_ALL`` (the NCHWc
transformer, which reorders Conv weights for MLAS) read Conv weights from the model file and
silently IGNORE ``add_initializer`` overrides: a Conv 8->16 channels ran with its stored weight. A
session with overrides therefore runs at ``ORT_ENABLE_EXTENDED`` at most, where overrides hold.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from graphprune.errors import ConfigError, DependencyError, InputError, UnsupportedModelError
from graphprune.runtime.compare import ParityStats, compare_outputs, flatten_outputs

__all__ = ["check_parity", "ort_session", "random_inputs", "run_onnx"]

PathLike = str | os.PathLike[str]
OptLevel = Literal["disable", "basic", "extended", "all"]
_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

_ORT_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise DependencyError(
            "onnxruntime is needed to run ONNX models for parity checks: pip install onnxruntime"
        ) from e
    return onnxruntime


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist (or is not a file)")
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise InputError(f"ONNX file {path} fails onnx.checker ({type(e).__name__}): {e}") from e


def ort_session(
    path: PathLike,
    *,
    threads: int = 2,
    initializers: Mapping[str, np.ndarray] | None = None,
    optimization: OptLevel = "all",
) -> Any:
    """A CPU ``InferenceSession`` for ``path``, optionally with stored weights replaced.

    ``initializers``: initializer name -> array of the stored shape and dtype; each must name an
    initializer of the file (ConfigError otherwise). The OrtValues stay alive with the session.
    ``optimization``: graph optimization level; with ``initializers`` it is capped at
    ``"extended"`` (see the module docstring: layout optimizations ignore overrides).
    """
    ort = _ort()
    if optimization not in _OPT_LEVELS:
        raise ConfigError(f"optimization must be one of {', '.join(_OPT_LEVELS)}, got {optimization!r}")
    if initializers and optimization == "all":
        optimization = "extended"
    path = Path(path)
    _check_file(path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[optimization])
    so.log_severity_level = 3
    keep: list[Any] = []
    if initializers:
        stored = {
            t.name: t for t in onnx.load(str(path), load_external_data=False).graph.initializer
        }
        for name, value in initializers.items():
            if name not in stored:
                raise ConfigError(
                    f"initializer override {name!r} names no initializer of {path}; "
                    f"it has {len(stored)} (e.g. {', '.join(list(stored)[:5])})"
                )
            arr = np.ascontiguousarray(_to_numpy(value))
            want_shape = tuple(int(d) for d in stored[name].dims)
            want_dtype = onnx.helper.tensor_dtype_to_np_dtype(stored[name].data_type)
            if arr.shape != want_shape or arr.dtype != want_dtype:
                raise ConfigError(
                    f"initializer override {name!r} is {arr.dtype}{list(arr.shape)}, but {path} stores "
                    f"{np.dtype(want_dtype)}{list(want_shape)}"
                )
            ort_value = ort.OrtValue.ortvalue_from_numpy(arr)
            keep.extend((arr, ort_value))
            so.add_initializer(name, ort_value)
    try:
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        if "NOT_IMPLEMENTED" in str(e):  # a valid model with an op/dtype ORT's CPU provider lacks (e.g. bf16 Gemm)
            raise UnsupportedModelError(
                f"onnxruntime (CPU) cannot run {path.name}: {str(e).split(' : ')[-1]}; use float32, or skip the "
                "onnxruntime check (--no-validate / validate=False)"
            ) from e
        raise InputError(f"onnxruntime cannot load {path}: {e}") from e
    # add_initializer does not copy: the arrays and OrtValues must outlive the session.
    session._graphprune_keepalive = (so, keep)
    return session


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype == torch.bfloat16:
            raise ConfigError("bfloat16 tensors cannot be fed to onnxruntime from numpy; cast to float32 first")
        return t.numpy()
    return np.asarray(x)


def _feed(session: Any, inputs: Any, input_names: Sequence[str] | None) -> dict[str, np.ndarray]:
    """Map positional or named inputs onto the session's inputs."""
    specs = session.get_inputs()
    wanted = [s.name for s in specs]
    if isinstance(inputs, Mapping):
        named = {str(k): v for k, v in inputs.items() if v is not None}
    else:
        leaves = flatten_outputs(tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,))
        if input_names is not None and len(input_names) == len(leaves) and set(wanted) <= set(input_names):
            named = dict(zip(input_names, leaves))
        elif len(leaves) == len(wanted):
            named = dict(zip(wanted, leaves))
        else:
            raise InputError(
                f"{len(leaves)} input tensor(s) given but the ONNX model takes {len(wanted)} "
                f"({', '.join(wanted)}); pass inputs as a dict by name, or input_names for the tensors"
            )
    missing = [n for n in wanted if n not in named]
    if missing:
        raise InputError(f"no value for ONNX input(s) {', '.join(missing)}; given: {', '.join(named) or 'nothing'}")
    feed: dict[str, np.ndarray] = {}
    for spec in specs:
        arr = _to_numpy(named[spec.name])
        dtype = _ORT_TYPES.get(spec.type)
        if dtype is not None and arr.dtype != dtype:
            arr = arr.astype(dtype)
        feed[spec.name] = np.ascontiguousarray(arr)
    return feed


def run_onnx(
    model: PathLike | Any,
    inputs: tuple[Any, ...] | list[Any] | Mapping[str, Any],
    *,
    input_names: Sequence[str] | None = None,
    initializers: Mapping[str, np.ndarray] | None = None,
    threads: int = 2,
    optimization: OptLevel = "all",
) -> list[np.ndarray]:
    """Run an ONNX file (or an existing session) on CPU and return its outputs in graph order.

    ``inputs``: a dict by ONNX input name (names the graph lacks, e.g. inputs the exporter dropped,
    are ignored), or positional example inputs (flattened like the exporter flattens them). Positional
    inputs are matched by ``input_names`` when those are given and cover every graph input, else by
    order. ``initializers`` replace stored weights (see :func:`ort_session`); a new session is made
    and released afterwards.
    """
    if isinstance(model, (str, os.PathLike)):
        session = ort_session(model, threads=threads, initializers=initializers, optimization=optimization)
    else:
        if initializers:
            raise ConfigError("initializer overrides need a path (they are fixed when a session is created)")
        session = model
    feed = _feed(session, inputs, input_names)
    return [np.asarray(o) for o in session.run(None, feed)]


def random_inputs(model_or_path: PathLike | onnx.ModelProto, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for an ONNX graph: dynamic dims -> 1, floats ~ N(0, 1), ints in [0, 4), random bools."""
    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(
        str(model_or_path), load_external_data=False
    )
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise InputError(f"ONNX input {vi.name!r} is not a tensor; give inputs explicitly")
        shape = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim)
        if tt.elem_type == onnx.TensorProto.BFLOAT16:
            raise InputError(
                f"ONNX input {vi.name!r} is bfloat16, which cannot be fed from numpy: run parity on a float32 "
                "or float16 model (prune_onnx: validate=False skips parity)"
            )
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if dtype.kind == "f":
            out[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            out[vi.name] = rng.integers(0, 2, shape).astype(bool)
        elif dtype.kind in "iu":
            out[vi.name] = rng.integers(0, 4, shape).astype(dtype)
        else:
            raise InputError(f"ONNX input {vi.name!r} has dtype {dtype}; give inputs explicitly")
    return out


def check_parity(
    model: Any,
    example_inputs: tuple[Any, ...],
    onnx_path: PathLike,
    *,
    dtype: Any = None,
    input_names: Sequence[str] | None = None,
    threads: int = 2,
) -> ParityStats:
    """Run ``model`` eagerly (``torch.no_grad``) and the ONNX file in onnxruntime on the same inputs.

    Outputs are flattened in pytree order on both sides and compared with
    :func:`~graphprune.runtime.compare.compare_outputs` (``dtype`` as there). Inputs are matched to
    the graph by name from the model's forward signature where possible, else by order.
    Returns the statistics without raising: ``ok`` is False on a mismatch (the caller decides).
    """
    from graphprune.runtime.export import forward_input_names

    if not isinstance(example_inputs, tuple):
        example_inputs = tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,)
    fn = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    with torch.no_grad():
        reference = fn(*example_inputs)
    names = list(input_names) if input_names is not None else forward_input_names(model, example_inputs)
    candidate = run_onnx(onnx_path, example_inputs, input_names=names, threads=threads)
    return compare_outputs(reference, candidate, dtype=dtype, name=f"torch vs onnxruntime ({Path(onnx_path).name})")
