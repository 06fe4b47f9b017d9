"""ONNX tensors stored outside the model file, read one at a time.

An ONNX model above protobuf's 2 GiB limit keeps its initializers in a separate data file (ONNX
"external data": each TensorProto carries ``location``, ``offset`` and ``length`` keys and
``data_location = EXTERNAL``). ``onnx.numpy_helper.to_array`` on such a tensor that was loaded with
``load_external_data=False`` either fails with an opaque error or, when the file is there, reads it
into memory all at once through the model. Everything graphprune reads from an ONNX file goes through
:func:`tensor_array` instead: one tensor at a time, straight from the data file, so memory stays
bounded by the largest tensor.

Missing or truncated data files raise :class:`~graphprune.errors.InputError` naming the file and a
tensor that needs it (:func:`check_external_data` checks every reference up front).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphprune.errors import InputError

__all__ = [
    "ExternalRef",
    "check_external_data",
    "external_ref",
    "external_refs",
    "is_external",
    "tensor_array",
    "tensor_nbytes",
]


class ExternalRef:
    """Where one external tensor lives: ``file`` (absolute), ``offset`` and ``length`` in bytes."""

    __slots__ = ("file", "length", "location", "offset", "tensor")

    def __init__(self, tensor: str, location: str, file: Path, offset: int, length: int | None) -> None:
        self.tensor = tensor
        self.location = location
        self.file = file
        self.offset = offset
        self.length = length

    def __repr__(self) -> str:
        return f"ExternalRef({self.tensor!r}, {self.location!r}, offset={self.offset}, length={self.length})"


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of the tensor's values (from its dims and type; no data is read)."""
    n = 1
    for d in tensor.dims:
        n *= int(d)
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError):
        itemsize = 4
    return n * itemsize


def external_ref(tensor: onnx.TensorProto, base_dir: str | os.PathLike[str]) -> ExternalRef:
    """The external-data reference of ``tensor`` (which must be external), resolved against ``base_dir``."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if not location:
        raise InputError(f"ONNX tensor {tensor.name!r} is stored externally but names no data file (no 'location')")
    base = Path(base_dir).resolve()
    file = (base / location).resolve()
    if base != file and base not in file.parents:
        raise InputError(
            f"ONNX tensor {tensor.name!r} points at {location!r}, outside the model's folder {base}; refusing to read it"
        )
    try:
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError as e:
        raise InputError(f"ONNX tensor {tensor.name!r} has a malformed external-data offset/length: {e}") from e
    return ExternalRef(tensor.name, location, file, offset, length)


def external_refs(tensors: Iterable[onnx.TensorProto], base_dir: str | os.PathLike[str]) -> list[ExternalRef]:
    return [external_ref(t, base_dir) for t in tensors if is_external(t)]


def _graph_tensors(graph: onnx.GraphProto) -> Iterable[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from _graph_tensors(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graph_tensors(g)


def check_external_data(model: onnx.ModelProto, base_dir: str | os.PathLike[str], *, label: str = "") -> list[Path]:
    """Check that every external-data file ``model`` refers to exists and is long enough.

    Returns the data files. Raises :class:`InputError` naming the first missing or truncated file
    and a tensor stored in it (``label``: how to name the model in the message).
    """
    what = label or "the ONNX model"
    sizes: dict[Path, int] = {}
    for ref in external_refs(_graph_tensors(model.graph), base_dir):
        if ref.file not in sizes:
            if not ref.file.is_file():
                raise InputError(
                    f"external data file {ref.file} of {what} is missing (tensor {ref.tensor!r} is stored there); "
                    "keep the .data file beside the .onnx file, or export again"
                )
            sizes[ref.file] = ref.file.stat().st_size
        end = ref.offset + (ref.length if ref.length is not None else 0)
        if end > sizes[ref.file]:
            raise InputError(
                f"external data file {ref.file} of {what} is truncated: tensor {ref.tensor!r} needs bytes "
                f"{ref.offset}..{end} but the file has {sizes[ref.file]}; export again"
            )
    return sorted(sizes)


def tensor_array(tensor: onnx.TensorProto, base_dir: str | os.PathLike[str] | None = None) -> np.ndarray:
    """The values of ``tensor`` as numpy (bfloat16 as ``ml_dtypes.bfloat16``), reading external data from disk.

    In-file tensors go through ``numpy_helper.to_array``. External tensors are read with one
    ``np.fromfile`` from their data file (``base_dir``: the model file's folder), never through
    ``to_array`` on an unloaded tensor. Raises :class:`InputError` naming the file when it is missing
    or too short.
    """
    if not is_external(tensor):
        return np.asarray(numpy_helper.to_array(tensor))
    if base_dir is None:
        raise InputError(
            f"ONNX tensor {tensor.name!r} is stored in an external data file, and no folder was given to find it in"
        )
    ref = external_ref(tensor, base_dir)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    dims = tuple(int(d) for d in tensor.dims)
    count = int(np.prod(dims)) if dims else 1
    want = count * dtype.itemsize
    if ref.length is not None and ref.length != want:
        raise InputError(
            f"ONNX tensor {tensor.name!r} declares {ref.length} bytes in {ref.file}, but its shape {list(dims)} "
            f"and type {dtype} need {want}"
        )
    try:
        size = ref.file.stat().st_size
    except OSError:
        raise InputError(
            f"external data file {ref.file} is missing (tensor {tensor.name!r} is stored there); "
            "keep the .data file beside the .onnx file, or export again"
        ) from None
    if ref.offset + want > size:
        raise InputError(
            f"external data file {ref.file} is truncated: tensor {tensor.name!r} needs bytes "
            f"{ref.offset}..{ref.offset + want} but the file has {size}"
        )
    with open(ref.file, "rb") as f:
        f.seek(ref.offset)
        raw = np.fromfile(f, dtype=np.uint8, count=want)
    return raw.view(dtype).reshape(dims)


def load_onnx_header(path: Path) -> onnx.ModelProto:
    """The graph of the ONNX file ``path`` without its weights' data, its external-data references
    checked (:func:`check_external_data`); InputError naming the file when it is missing or unparsable."""
    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist (or is not a file)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise InputError(
            f"ONNX file {path} fails onnx.checker ({type(e).__name__}): it cannot be parsed: {str(e).splitlines()[0] if str(e) else e}"
        ) from e
    check_external_data(model, path.parent, label=str(path))
    return model
