"""Compressed N:M checkpoints: kept values + packed index metadata in safetensors (no pickle).

File layout (one safetensors file)
----------------------------------
For every floating tensor that is N:M along its reduction axis K (``axes[name]``; by default the
module's K axis when a model is given, else axis 1 for tensors of rank >= 2):

``NAME::values``  the N kept values of every group of M consecutive elements along K, shape
                  ``[groups, N]``, in the stored dtype (or ``values_dtype`` when the caller asks
                  for a cast; the header then records ``cast_from`` and the round trip is exact
                  only up to that cast);
``NAME::meta``    uint8: the position (0..M-1) of each kept value inside its group, ``b =
                  ceil(log2 M)`` bits each, packed little-endian (2:4 → 2 bits, four indices per
                  byte: one byte holds the metadata of two groups).

Every other tensor is stored as is under its own name (``form: "dense"``, with the reason), and a
tensor that shares storage with an earlier one is stored once (``form: "alias"``).

Size for a 2:4 fp16 weight of ``E`` elements: values ``E/2 × 2`` bytes + metadata ``E/2 × 2`` bits
= ``1.125 E`` bytes = 0.5625× the dense fp16 ``2 E`` bytes.

The JSON header (safetensors metadata key ``graphprune``) records per tensor its form, shape,
dtype, axis, N, M and a SHA-256 of the bytes stored for it. Loading checks every tensor against it
and raises :class:`~graphprune.errors.InputError` naming the first tensor that is missing, of the
wrong shape or dtype, tampered with (checksum), or carries impossible metadata; nothing is
returned (and no model is touched) unless every tensor loaded. A group holding fewer than N
nonzeros stores zeros in its free slots, so the round trip is exact (``-0.0`` in a pruned slot comes
back as ``+0.0``, which ``torch.equal`` treats as equal).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from graphprune.checkpoint.nm_codec import _compress, _dtype_name, _load_one, _sha256
from graphprune.errors import ConfigError, DependencyError, InputError
from graphprune.io.files import atomic_write
from graphprune.sparsity import check_nm

__all__ = ["CompressedSummary", "TensorRecord", "load_compressed", "save_compressed"]

FORMAT = "graphprune.nm-checkpoint/1"
_HEADER_KEY = "graphprune"

# K axis of a module's weight (see analysis/sites.py); anything else defaults to axis 1
_K_AXIS_BY_TYPE = {
    "ConvTranspose1d": 0,
    "ConvTranspose2d": 0,
    "ConvTranspose3d": 0,
    "Conv1D": 0,  # transformers GPT-2: weight [in, out]
}


@dataclass
class TensorRecord:
    """How one tensor was stored."""

    name: str
    form: Literal["nm", "dense", "alias"]
    shape: tuple[int, ...]
    dtype: str
    stored_bytes: int
    dense_fp16_bytes: int
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "shape": list(self.shape)}


@dataclass
class CompressedSummary:
    """What :func:`save_compressed` wrote. ``ratio``: bytes stored for the N:M tensors over their
    dense fp16 bytes (0.5625 for 2:4); ``file_bytes``: the whole file, header included."""

    path: Path
    n: int
    m: int
    records: list[TensorRecord] = field(default_factory=list)
    file_bytes: int = 0

    @property
    def nm_records(self) -> list[TensorRecord]:
        return [r for r in self.records if r.form == "nm"]

    @property
    def ratio(self) -> float:
        nm = self.nm_records
        dense = sum(r.dense_fp16_bytes for r in nm)
        return sum(r.stored_bytes for r in nm) / dense if dense else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "n": self.n,
            "m": self.m,
            "ratio": self.ratio,
            "file_bytes": self.file_bytes,
            "tensors": [r.to_dict() for r in self.records],
        }


def _state_and_axes(state_or_model: Mapping[str, Tensor] | nn.Module) -> tuple[dict[str, Tensor], dict[str, int]]:
    if isinstance(state_or_model, nn.Module):
        state = dict(state_or_model.state_dict())
        axes: dict[str, int] = {}
        for mod_name, mod in state_or_model.named_modules():
            k = _K_AXIS_BY_TYPE.get(type(mod).__name__)
            if k is not None:
                axes[f"{mod_name}.weight" if mod_name else "weight"] = k
        return state, axes
    if not isinstance(state_or_model, Mapping):
        raise ConfigError(f"save_compressed needs an nn.Module or a state dict, got {type(state_or_model).__name__}")
    return dict(state_or_model), {}


def save_compressed(
    state_or_model: Mapping[str, Tensor] | nn.Module,
    path: str | Path,
    *,
    n: int = 2,
    m: int = 4,
    axes: Mapping[str, int] | None = None,
    values_dtype: torch.dtype | None = None,
) -> CompressedSummary:
    """Write ``state_or_model`` to ``path`` (safetensors), N:M tensors compressed (see the module docstring).

    ``axes``: tensor name -> K axis, overriding the defaults (the module's K axis; axis 1). A tensor
    that is not N:M along its axis, or whose K is not a multiple of ``m``, is stored dense and its
    record says why. ``values_dtype``: cast policy for the kept values (e.g. ``torch.float16`` for
    fp32 weights); None keeps the stored dtype, which makes the round trip exact. The file is written
    atomically. Returns the per-tensor records and the size ratio.
    """
    from safetensors.torch import save_file

    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m) or isinstance(n, bool):
        raise ConfigError(f"N:M pattern {n}:{m} is invalid: need ints 0 < N < M, e.g. n=2, m=4")
    if values_dtype is not None and not (isinstance(values_dtype, torch.dtype) and values_dtype.is_floating_point):
        raise ConfigError(f"values_dtype must be a floating torch dtype or None, got {values_dtype!r}")
    state, default_axes = _state_and_axes(state_or_model)
    default_axes.update(dict(axes or {}))
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    index: dict[str, dict[str, Any]] = {}
    records: list[TensorRecord] = []
    seen: dict[tuple[Any, ...], str] = {}
    storages: set[int] = set()
    for name, t in state.items():
        if not isinstance(t, Tensor):
            raise ConfigError(f"state entry {name!r} is a {type(t).__name__}, not a tensor")
        if "::" in name:
            raise ConfigError(f"tensor name {name!r} contains '::', which the compressed format reserves")
        t = t.detach().cpu()
        if t.layout != torch.strided:
            raise ConfigError(f"tensor {name!r} has layout {t.layout}; save the dense weights (to_dense())")
        shape = tuple(t.shape)
        dense16 = t.numel() * 2
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), shape, tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            index[name] = {"form": "alias", "of": seen[key]}
            records.append(TensorRecord(name, "alias", shape, _dtype_name(t.dtype), 0, dense16, f"same tensor as {seen[key]}"))
            continue
        if t.numel():
            seen[key] = name
        reason = ""
        axis = default_axes.get(name, 1)
        if not t.is_floating_point():
            reason = "not floating point"
        elif t.dim() < 2:
            reason = f"rank {t.dim()} (N:M applies to weights of rank >= 2)"
        elif not -t.dim() <= axis < t.dim():
            raise ConfigError(f"axes[{name!r}] = {axis} is out of range for shape {shape}")
        elif shape[axis % t.dim()] % m:
            reason = f"K = {shape[axis % t.dim()]} (axis {axis % t.dim()}) is not a multiple of M = {m}"
        else:
            axis %= t.dim()
            chk = check_nm(t, n, m, axis=axis)
            if not chk.ok:
                reason = f"not {n}:{m} along axis {axis} ({chk.violations} of {chk.groups} groups hold more than {n} nonzeros)"
        if reason:
            stored = t.contiguous()
            if stored.untyped_storage().data_ptr() in storages:  # safetensors refuses shared storage
                stored = stored.clone()
            storages.add(stored.untyped_storage().data_ptr())
            tensors[name] = stored
            index[name] = {"form": "dense", "shape": list(shape), "dtype": _dtype_name(t.dtype), "sha256": _sha256(stored), "reason": reason}
            records.append(TensorRecord(name, "dense", shape, _dtype_name(t.dtype), stored.numel() * stored.element_size(), dense16, reason))
            continue
        values, meta = _compress(t, n, m, axis)
        entry: dict[str, Any] = {"form": "nm", "shape": list(shape), "dtype": _dtype_name(t.dtype), "axis": axis, "n": n, "m": m}
        if values_dtype is not None and values_dtype != t.dtype:
            values = values.to(values_dtype)
            entry["cast_from"] = _dtype_name(t.dtype)
        entry["values_dtype"] = _dtype_name(values.dtype)
        entry["sha256"] = _sha256(values, meta)
        tensors[f"{name}::values"] = values.contiguous()
        tensors[f"{name}::meta"] = meta
        index[name] = entry
        nbytes = values.numel() * values.element_size() + meta.numel()
        records.append(TensorRecord(name, "nm", shape, _dtype_name(t.dtype), nbytes, dense16))
    header = {"format": FORMAT, "tensors": index}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={_HEADER_KEY: json.dumps(header)}))
    return CompressedSummary(path=path, n=n, m=m, records=records, file_bytes=path.stat().st_size)


def _read_header(f: Any, path: Path) -> dict[str, dict[str, Any]]:
    meta = f.metadata() or {}
    raw = meta.get(_HEADER_KEY)
    if raw is None:
        raise InputError(f"{path} is a safetensors file without a graphprune header: not a compressed checkpoint")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: the graphprune header is not valid JSON ({e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT or not isinstance(header.get("tensors"), dict):
        raise InputError(f"{path}: unknown checkpoint format {header.get('format') if isinstance(header, dict) else header!r}; expected {FORMAT}")
    return header["tensors"]


def load_compressed(
    path: str | Path,
    *,
    to: Literal["dense", "semi_structured"] = "dense",
    device: str | torch.device | None = None,
    model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """Read a checkpoint written by :func:`save_compressed`; returns the state dict.

    ``to="dense"``: every tensor dense, exactly as saved (up to a stated ``values_dtype`` cast).
    ``to="semi_structured"``: 2:4 fp16/bf16 2-D tensors whose shape the kernels accept become
    ``torch.sparse.to_sparse_semi_structured`` tensors on ``device`` (CUDA only: DependencyError
    otherwise); the rest stay dense on ``device``. ``model``: also load the result into ``model``
    (``strict``), after checking every name and shape, so a failure leaves the model untouched.
    Raises InputError naming the file, and the tensor where one is at fault.
    """
    from safetensors import safe_open

    if to not in ("dense", "semi_structured"):
        raise ConfigError(f"to must be 'dense' or 'semi_structured', got {to!r}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"compressed checkpoint {path} does not exist (or is not a file)")
    if to == "semi_structured":
        dev = torch.device(device if device is not None else "cuda")
        if dev.type != "cuda" or not torch.cuda.is_available():
            raise DependencyError(
                "to='semi_structured' needs a CUDA GPU (torch.sparse.to_sparse_semi_structured runs on sm80+); "
                f"torch.cuda.is_available() is {torch.cuda.is_available()}, device {dev}: load with to='dense'"
            )
    try:
        f_ctx = safe_open(str(path), framework="pt")
    except Exception as e:
        raise InputError(f"compressed checkpoint {path} is corrupt or not a safetensors file ({type(e).__name__}: {e})") from e
    out: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    with f_ctx as f:
        index = _read_header(f, path)
        names = set(f.keys())
        for name, entry in index.items():
            if not isinstance(entry, dict):
                raise InputError(f"compressed checkpoint {path}, tensor {name!r}: header entry is not an object")
            if entry.get("form") == "alias":
                aliases[name] = str(entry.get("of"))
                continue
            out[name] = _load_one(f, name, entry, names, path)
    for name, of in aliases.items():
        if of not in out:
            raise InputError(f"compressed checkpoint {path}, tensor {name!r}: alias of {of!r}, which the file does not hold")
        out[name] = out[of]
    if device is not None or to == "semi_structured":
        dev = torch.device(device if device is not None else "cuda")
        moved: dict[int, Tensor] = {}
        for name, t in out.items():
            out[name] = moved.setdefault(id(t), t.to(dev))
    if model is not None:
        _load_into(model, out, path)
    if to == "semi_structured":
        converted: dict[int, Tensor] = {}
        for name, entry in index.items():
            if entry.get("form") == "nm" and (entry["n"], entry["m"]) == (2, 4):
                t = out[name]
                if id(t) not in converted and _semi_structured_ok(t):
                    converted[id(t)] = torch.sparse.to_sparse_semi_structured(t)
        for name, t in list(out.items()):
            if id(t) in converted:
                out[name] = converted[id(t)]
                if model is not None:
                    _set_semi_structured(model, name, out[name])
    return out


def _set_semi_structured(model: nn.Module, name: str, t: Tensor) -> None:
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if isinstance(getattr(mod, attr, None), nn.Parameter):
        setattr(mod, attr, nn.Parameter(t, requires_grad=False))


def _semi_structured_ok(t: Tensor) -> bool:
    if t.dim() != 2 or t.dtype not in (torch.float16, torch.bfloat16):
        return False
    rows, cols = t.shape
    return rows % 32 == 0 and cols % 64 == 0  # the CUTLASS minimum; cuSPARSELt accepts a superset


def _load_into(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise InputError(
            f"compressed checkpoint {path} does not match {type(model).__name__}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for name, t in state.items():
        if tuple(own[name].shape) != tuple(t.shape):
            raise InputError(
                f"compressed checkpoint {path}, tensor {name!r}: shape {list(t.shape)} does not match the model's {list(own[name].shape)}"
            )
    model.load_state_dict(state, strict=True)
