"""onnxruntime on CPU: sessions, runs, and torch-vs-ONNX parity.

Sessions always use ``intra_op_num_threads=threads`` (2 by default), ``inter_op_num_threads=1``,
``ORT_ENABLE_ALL`` and ``CPUExecutionProvider`` (see BENCHMARKING.md). onnxruntime is imported
lazily; a missing install raises :class:`~graphprune.errors.DependencyError`. Files are checked
with ``onnx.checker`` before onnxruntime parses them.

Initializer overrides: ``initializers={name: array}`` replaces stored weights for one session via
``SessionOptions.add_initializer`` (the file is not touched). This is how a file pruned in place is
compared with its dense original under the same masks.

Parity (:func:`check_parity`) holds at most one session and never the ONNX bytes: the torch
references are computed first, then one session is created from the path (onnxruntime maps external
data from disk), run at every batch size, and released. Where onnxruntime's CPU provider cannot run
the file's dtype (bfloat16, float16), the session runs a float32 copy of the graph
(:func:`graphprune.runtime.precision.upcast_onnx`, written beside the file and deleted afterwards)
against the torch model upcast to float32 in place. Both sides then compute in float32 on the same
weights, but constants the exporter folded into the graph (rotary cos/sin tables, attention-mask
fill values) were folded in the model's dtype and are stored rounded to it; so the tolerance is the
file dtype's (a 300M-parameter bfloat16 Llama differs by max_rel 3e-4 from the float32 reference,
outside float32's 1e-4 and well inside bfloat16's 3e-2). The record's ``how``
says which comparison was made.

onnxruntime quirk (1.32, found here): the layout optimizations of ``ORT_ENABLE_ALL`` (the NCHWc
transformer, which reorders Conv weights for MLAS) read Conv weights from the model file and
silently IGNORE ``add_initializer`` overrides: a Conv 8->16 channels ran with its stored weight. A
session with overrides therefore runs at ``ORT_ENABLE_EXTENDED`` at most, where overrides hold.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from graphprune.errors import ConfigError, DependencyError, InputError, UnsupportedModelError
from graphprune.runtime.compare import ParityStats, compare_outputs, flatten_outputs, merge_parity
from graphprune.runtime.external_data import load_onnx_header

__all__ = ["check_parity", "ort_session", "parity_batches", "random_inputs", "resize_batch", "run_onnx"]

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
    load_onnx_header(path)  # parses it and checks its external-data references (the graph is not kept)
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
            t = t.float()  # exact; numpy has no bfloat16 (the session's input type decides the final cast)
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


def _batch(args: tuple[Any, ...]) -> int | None:
    return next((int(a.shape[0]) for a in args if isinstance(a, torch.Tensor) and a.dim() > 0), None)


def resize_batch(args: tuple[Any, ...], batch: int) -> tuple[Any, ...]:
    """The example inputs at another batch size: row ``i`` is example row ``i % B`` (B = the example batch).

    Only tensors whose axis 0 is the example batch change; the rows stay valid inputs (real token ids,
    consistent masks).
    """
    b0 = _batch(args)
    if b0 is None:
        return args
    idx = torch.arange(batch) % b0
    return tuple(
        a.index_select(0, idx) if isinstance(a, torch.Tensor) and a.dim() > 0 and int(a.shape[0]) == b0 else a
        for a in args
    )


def _dynamic_batch(path: Path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            return True
    return False


def parity_batches(example_inputs: tuple[Any, ...], onnx_path: PathLike) -> list[int]:
    """The example batch, and a second batch size when the ONNX's batch axis is dynamic.

    The second size differs from the example's and from 2 (where a batch of 1 was traced): ``B + 1``,
    or 3 for ``B = 1``.
    """
    b = _batch(tuple(example_inputs))
    if b is None:
        return []
    if not _dynamic_batch(Path(onnx_path)):
        return [b]
    return [b, b + 1 if b > 1 else 3]


def check_parity(
    model: Any,
    example_inputs: tuple[Any, ...],
    onnx_path: PathLike,
    *,
    dtype: Any = None,
    input_names: Sequence[str] | None = None,
    threads: int = 2,
    batch_sizes: Sequence[int] | Literal["auto"] | None = "auto",
    reference: Literal["auto", "float32", "own"] = "auto",
    progress: bool = False,
) -> ParityStats:
    """Run ``model`` eagerly (``torch.no_grad``) and the ONNX file in onnxruntime on the same inputs.

    ``batch_sizes``: ``"auto"`` checks the example batch, and a second size when the ONNX batch axis
    is dynamic (:func:`parity_batches`); a list checks those sizes (:func:`resize_batch`); None
    checks the example inputs as given. Outputs are flattened in pytree order on both sides and
    compared with :func:`~graphprune.runtime.compare.compare_outputs` (``dtype`` as there).

    A float16/bfloat16 ONNX runs as a float32 copy (see the module docstring). ``reference``:
    ``"float32"`` upcasts the torch model in place for the reference (tolerances of the file dtype, see the module docstring);
    ``"own"`` keeps the model's dtype (tolerances of the less precise side); ``"auto"`` is
    ``"float32"``. The result's ``how`` says what was compared with what. Returns the statistics
    without raising: ``ok`` is False on a mismatch (the caller decides).
    """
    from tqdm.auto import tqdm

    from graphprune.runtime.export import forward_input_names
    from graphprune.runtime.precision import cast_inputs, onnx_low_precision, upcast_in_place, upcast_onnx

    if reference not in ("auto", "float32", "own"):
        raise ConfigError(f"reference must be 'auto', 'float32' or 'own', got {reference!r}")
    if not isinstance(example_inputs, tuple):
        example_inputs = tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,)
    path = Path(onnx_path)
    _check_file(path)
    fn = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    if batch_sizes == "auto":
        sizes: list[int | None] = list(parity_batches(example_inputs, path)) or [None]
    elif batch_sizes is None:
        sizes = [None]
    else:
        sizes = list(batch_sizes)
    b0 = _batch(example_inputs)
    feeds = [example_inputs if (b is None or b == b0) else resize_batch(example_inputs, b) for b in sizes]
    low = onnx_low_precision(path)
    upcast = low is not None and isinstance(fn, torch.nn.Module) and reference != "own"
    steps = 2 * len(feeds) + 1 + (1 if low else 0)
    names = list(input_names) if input_names is not None else forward_input_names(model, example_inputs)
    refs: list[Any] = []
    skipped: list[str] = []
    with tqdm(total=steps, desc="parity", disable=not progress, leave=False) as bar:
        with torch.no_grad(), upcast_in_place(fn) if upcast else contextlib.nullcontext(False):
            for i, args in enumerate(list(feeds)):
                try:  # upcast: the float inputs too (lossless; the float32 ONNX copy casts its feeds alike)
                    refs.append(fn(*(cast_inputs(args, torch.float32) if upcast else args)))
                except Exception as e:
                    if sizes[i] is None or sizes[i] == b0:
                        raise
                    # the ONNX batch axis is dynamic but the torch model itself fixes the batch (e.g. a
                    # module unlifted from a static .pt2 asserts its input sizes): nothing to compare with
                    skipped.append(f"batch {sizes[i]} not checked: the torch model fails there "
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
                    refs.append(None)
                bar.update()
        keep = [i for i, r in enumerate(refs) if r is not None]
        refs = [refs[i] for i in keep]
        feeds = [feeds[i] for i in keep]
        sizes = [sizes[i] for i in keep]
        tmpdir: str | None = None
        run_path = path
        try:
            if low is not None:
                from graphprune.runtime.resources import check_free_space

                onnx_bytes = sum(f.stat().st_size for f in path.parent.glob(path.name + "*") if f.is_file())
                check_free_space(path.parent, 2 * onnx_bytes, what=f"the float32 copy of {path.name} for onnxruntime")
                tmpdir = tempfile.mkdtemp(prefix=f".{path.name}.float32-", dir=path.parent)
                run_path = upcast_onnx(path, Path(tmpdir) / path.name, progress=progress)
                bar.update()
            session = ort_session(run_path, threads=threads)
            bar.update()
            cands = []
            for args in feeds:
                cands.append(run_onnx(session, args, input_names=names))
                bar.update()
            del session
        finally:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
    ref_dtype = "float32" if upcast else (str(getattr(_first_float(refs), "dtype", "")).removeprefix("torch.") or None)
    if low is None:
        how = "onnxruntime CPU on the ONNX file vs the torch model"
    elif upcast:
        how = (f"onnxruntime CPU on a float32 copy of the {low} ONNX vs the torch model upcast to float32 "
               f"(both compute in float32 on the same weights); {low} tolerances, because constants the "
               f"exporter folded (rotary tables, attention masks) are stored in {low}")
    else:
        how = f"onnxruntime CPU on a float32 copy of the {low} ONNX vs the torch model in {ref_dtype}; {low} tolerances"
    stats = [
        compare_outputs(
            r, c, dtype=dtype if dtype is not None else (low if upcast else None),
            name=f"torch vs onnxruntime ({path.name}" + (f", batch {b})" if b is not None else ")"),
        )
        for r, c, b in zip(refs, cands, sizes)
    ]
    merged = merge_parity(stats, name=f"torch vs onnxruntime ({path.name})", how=how,
                          batch_sizes=[b for b in sizes if b is not None])
    if skipped:
        merged.message = "; ".join([*skipped, merged.message] if merged.message else skipped)
    return merged


def _first_float(trees: list[Any]) -> Any:
    for leaf in flatten_outputs(trees):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            return leaf
    return None
