"""Encoding and decoding of one tensor of a compressed N:M checkpoint (the layout is described in
:mod:`graphprune.checkpoint`).

``_compress`` turns a tensor that is N:M along one axis into its kept values ``[groups, N]`` and the
packed positions (:func:`pack_indices`, ``ceil(log2 M)`` bits each); ``_decompress`` inverts it.
``_load_one`` reads one header entry's tensors from an open safetensors file and checks them
(presence, shape, dtype, SHA-256, possible metadata) before decoding, raising
:class:`~graphprune.errors.InputError` naming the file and the tensor. Pure tensor functions; no
file is written here.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from graphprune.errors import InputError


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")



def _dtype_of(name: str, where: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise InputError(f"{where}: unknown dtype {name!r} in the header")
    return dt



def _bits(m: int) -> int:
    return max(1, (m - 1).bit_length())



def _sha256(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        flat = t.detach().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).cpu().numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()



def pack_indices(idx: Tensor, bits: int) -> Tensor:
    """Pack integers ``0 <= idx < 2**bits`` (any shape, read flat) ``bits`` bits each, little-endian,
    into a uint8 tensor of ``ceil(numel * bits / 8)`` bytes (2 bits: four indices per byte, the first
    in the lowest bits)."""
    flat = idx.reshape(-1).to(torch.int32)
    if 8 % bits == 0:
        per = 8 // bits
        pad = (-flat.numel()) % per
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        cols = flat.reshape(-1, per)
        out = torch.zeros(cols.shape[0], dtype=torch.int32)
        for j in range(per):
            out |= cols[:, j] << (bits * j)
        return out.to(torch.uint8)
    shifts = torch.arange(bits, dtype=torch.int32)
    bitstream = ((flat[:, None] >> shifts) & 1).reshape(-1)
    pad = (-bitstream.numel()) % 8
    if pad:
        bitstream = torch.cat([bitstream, bitstream.new_zeros(pad)])
    return (bitstream.reshape(-1, 8) << torch.arange(8, dtype=torch.int32)).sum(1).to(torch.uint8)



def unpack_indices(packed: Tensor, count: int, bits: int) -> Tensor:
    """Inverse of :func:`pack_indices`: the first ``count`` integers (int64)."""
    bytes_ = packed.reshape(-1).to(torch.int32)
    if 8 % bits == 0:
        per = 8 // bits
        mask = (1 << bits) - 1
        cols = torch.stack([(bytes_ >> (bits * j)) & mask for j in range(per)], dim=1)
        return cols.reshape(-1)[:count].to(torch.int64)
    bitstream = ((bytes_[:, None] >> torch.arange(8, dtype=torch.int32)) & 1).reshape(-1)
    bitstream = bitstream[: count * bits].reshape(count, bits)
    return (bitstream << torch.arange(bits, dtype=torch.int32)).sum(1).to(torch.int64)



def _compress(t: Tensor, n: int, m: int, axis: int) -> tuple[Tensor, Tensor]:
    """``t`` (N:M along ``axis``) -> (values ``[G, n]``, packed metadata)."""
    groups = t.movedim(axis, -1).contiguous().reshape(-1, m)
    nonzero = groups != 0
    # positions of the nonzeros first (in index order), then zero slots to fill up to n
    order = torch.argsort((~nonzero).to(torch.int8), dim=1, stable=True)[:, :n]
    idx = order.sort(dim=1).values
    values = torch.gather(groups, 1, idx)
    return values, pack_indices(idx, _bits(m))



def _decompress(values: Tensor, packed: Tensor, shape: tuple[int, ...], axis: int, n: int, m: int, where: str) -> Tensor:
    g = values.shape[0]
    idx = unpack_indices(packed, g * n, _bits(m)).reshape(g, n)
    if g and int(idx.max()) >= m:
        raise InputError(f"{where}: index metadata points outside its group of {m}")
    if n > 1 and g and bool((idx[:, 1:] <= idx[:, :-1]).any()):
        raise InputError(f"{where}: index metadata repeats a position inside a group (corrupt metadata)")
    groups = values.new_zeros(g, m)
    groups.scatter_(1, idx, values)
    moved = list(shape)
    k = moved.pop(axis)
    moved.append(k)
    return groups.reshape(moved).movedim(-1, axis).contiguous()



def _get(f: Any, key: str, where: str, names: set[str]) -> Tensor:
    if key not in names:
        raise InputError(f"{where}: stored tensor {key!r} is missing from the file")
    try:
        return f.get_tensor(key)
    except Exception as e:
        raise InputError(f"{where}: stored tensor {key!r} cannot be read ({type(e).__name__}: {e})") from e



def _load_one(f: Any, name: str, entry: dict[str, Any], names: set[str], path: Path) -> Tensor:
    where = f"compressed checkpoint {path}, tensor {name!r}"
    try:
        form = entry["form"]
        shape = tuple(int(s) for s in entry["shape"])
        dtype = _dtype_of(entry["dtype"], where)
        digest = entry["sha256"]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{where}: header entry is incomplete ({type(e).__name__}: {e})") from e
    if form == "dense":
        t = _get(f, name, where, names)
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise InputError(f"{where}: stored as {t.dtype}{list(t.shape)}, header says {dtype}{list(shape)}")
        if _sha256(t) != digest:
            raise InputError(f"{where}: checksum mismatch (the tensor's bytes were changed or corrupted)")
        return t
    if form != "nm":
        raise InputError(f"{where}: unknown form {form!r}")
    try:
        n, m, axis = int(entry["n"]), int(entry["m"]), int(entry["axis"])
        vdtype = _dtype_of(entry["values_dtype"], where)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{where}: header entry is incomplete ({type(e).__name__}: {e})") from e
    if not (0 < n < m and 0 <= axis < len(shape)) or shape[axis] % m:
        raise InputError(f"{where}: header has an impossible layout ({n}:{m}, axis {axis}, shape {list(shape)})")
    values = _get(f, f"{name}::values", where, names)
    meta = _get(f, f"{name}::meta", where, names)
    groups = math.prod(shape) // m
    want_meta = math.ceil(groups * n * _bits(m) / 8)
    if tuple(values.shape) != (groups, n) or values.dtype != vdtype:
        raise InputError(f"{where}: values are {values.dtype}{list(values.shape)}, expected {vdtype}{[groups, n]}")
    if meta.dtype != torch.uint8 or tuple(meta.shape) != (want_meta,):
        raise InputError(f"{where}: metadata is {meta.dtype}{list(meta.shape)}, expected uint8[{want_meta}]")
    if _sha256(values, meta) != digest:
        raise InputError(f"{where}: checksum mismatch (the values or index metadata were changed or corrupted)")
    return _decompress(values.to(dtype), meta, shape, axis, n, m, where)
