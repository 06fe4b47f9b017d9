"""Read a ``torch.export.save`` archive (``.pt2``) without running anything stored in it.

``torch.export.load`` unpickles with ``weights_only=False`` whenever the safe load fails (the
example inputs, any weight or constant saved with ``use_pickle``, legacy weight files), and turns
graph targets and attribute names from the file into Python calls and generated code. A crafted
file therefore runs code. :func:`read_pt2` reads the archive itself (it is a zip):

- the program (``models/model.json``) is JSON, turned into torch's schema dataclasses; before it
  is rebuilt, every node target must be an operator (an ``OpOverload`` outside the file-touching
  ones, an allow-listed higher-order operator, or one of the symbolic-shape functions torch
  itself serializes), and every attribute name (parameters, buffers, constants, subgraphs) must
  be made of word characters and dots, so that nothing from the file reaches FX's generated code;
- weights and constants stored raw are read as bytes into tensors (dtype, sizes, strides and
  storage offset from their JSON metadata);
- the example inputs are read with ``torch.load(weights_only=True)`` (tensors and containers only);
- entries that only pickle can read (``use_pickle`` tensors, custom and opaque objects, legacy
  ``.pt`` weight files that ``weights_only`` refuses) and compiled code (AOTInductor, ExecuTorch)
  are refused with a message saying what to do, unless ``trust_pickle=True`` (the user's explicit
  ``--trust-pickle``), which unpickles them as torch would.

Sizes are checked before anything is inflated (see :func:`graphprune.io.files.check_zip_sizes`).
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import shutil
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graphprune.errors import InputError
from graphprune.io.files import check_zip_sizes

__all__ = ["Pt2Contents", "check_program_json", "is_pt2", "read_pt2", "write_pt2"]

# torch.export.pt2_archive.constants, spelled out so that reading them needs no torch internals
_WEIGHTS_DIR = "data/weights/"
_CONSTANTS_DIR = "data/constants/"
_SAMPLE_INPUTS = "data/sample_inputs/{}.pt"
_MODEL_JSON = "models/{}.json"
_WEIGHTS_CONFIG = "data/weights/{}_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/{}_constants_config.json"
_CODE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia")
_TENSOR_PREFIX = "tensor_"

# higher-order operators whose bodies are subgraphs of the same file (checked like the rest)
_SAFE_HOPS = frozenset({
    "associative_scan", "auto_functionalized", "auto_functionalized_v2", "cond", "flex_attention",
    "hints_wrapper", "invoke_subgraph", "map_impl", "out_dtype", "run_const_graph", "scan", "while_loop",
    "while_loop_stack_output", "with_effects", "wrap_with_autocast", "wrap_with_set_grad_enabled",
})
# operators that read or write files named by their arguments
_FILE_OPS = frozenset({"aten.from_file", "aten.save", "debugprims.load_tensor"})
_OPERATOR_FNS = frozenset({
    "getitem", "eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add", "sub", "floordiv", "mod",
    "pow", "truediv", "and_", "or_", "lshift", "rshift", "not_", "abs",
})
_TORCH_SYM_FNS = frozenset({"sym_not", "sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_sqrt", "_sym_sqrt"})
_NAME_KEYS = frozenset({
    "parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "user_input_name", "fqn",
})
_SAFE_NAME = re.compile(r"^[\w.@-]*$")


@dataclass
class Pt2Contents:
    """The ExportedProgram of a ``.pt2`` and its stored example inputs (None when not read)."""

    program: torch.export.ExportedProgram
    example_inputs: tuple[tuple[Any, ...], dict[str, Any]] | None


# ---- the program ------------------------------------------------------------------------------
def _target_problem(target: str) -> str | None:
    """Why ``target`` (a serialized node target) is refused, or None when it is an operator."""
    parts = target.split(".")
    if target.startswith("torch.ops.") and len(parts) >= 4:
        ns, op = parts[2], parts[3]
        if ns == "higher_order":
            return None if op in _SAFE_HOPS and len(parts) == 4 else "a higher-order operator that may run code"
        if f"{ns}.{op}" in _FILE_OPS:
            return "an operator that reads or writes files"
        if len(parts) != 5:
            return "not an operator overload"
        try:
            resolved = getattr(getattr(getattr(torch.ops, ns), op), parts[4])
        except (AttributeError, RuntimeError):
            return "an operator this torch does not have (a custom op whose library is not loaded?)"
        return None if isinstance(resolved, torch._ops.OpOverload) else "not an operator overload"
    if len(parts) == 2 and parts[0] == "_operator" and parts[1] in _OPERATOR_FNS:
        return None
    if len(parts) == 2 and parts[0] == "math" and callable(getattr(math, parts[1], None)):
        return None
    if len(parts) == 2 and parts[0] == "torch" and parts[1] in _TORCH_SYM_FNS:
        return None
    return "not an operator: a Python function that would be called with arguments from the file"


def _walk(obj: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield path, str(k), v
            yield from _walk(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")


def check_program_json(program: Any, label: str) -> None:
    """Refuse a serialized program whose targets are not operators or whose names could inject code."""
    if not isinstance(program, dict) or "graph_module" not in program:
        raise InputError(f"{label}: models/model.json is not a serialized ExportedProgram")
    for _where, key, value in _walk(program):
        if key == "target" and isinstance(value, str):
            why = _target_problem(value)
            if why is not None:
                raise InputError(f"{label}: graph node target {value[:120]!r} is refused ({why}); graphprune runs no code from a model file")
        elif key == "as_operator" and isinstance(value, str):
            why = _target_problem(value)
            if why is not None:
                raise InputError(f"{label}: operator argument {value[:120]!r} is refused ({why})")
        elif key in _NAME_KEYS or (key == "as_graph" and isinstance(value, dict)):
            name = value.get("name") if key == "as_graph" else value
            if name is not None and not (isinstance(name, str) and _SAFE_NAME.match(name)):
                raise InputError(
                    f"{label}: {key} {str(name)[:120]!r} is not a plain attribute name (letters, digits, '_', '.'); "
                    "refused: such names end up in generated code"
                )


# ---- tensors ----------------------------------------------------------------------------------
class _Archive:
    def __init__(self, zf: zipfile.ZipFile, prefix: str, label: str):
        self.zf, self.prefix, self.label = zf, prefix, label
        self.names = {n[len(prefix):]: n for n in zf.namelist() if n.startswith(prefix)}

    def has(self, name: str) -> bool:
        return name in self.names

    def read(self, name: str) -> bytes:
        if name not in self.names:
            raise InputError(f"{self.label}: entry {name!r} is missing")
        return self.zf.read(self.names[name])

    def read_into(self, name: str) -> bytearray:
        info = self.zf.getinfo(self.names[name])
        buf = bytearray(info.file_size)
        with self.zf.open(info) as f:
            view = memoryview(buf)
            pos = 0
            while pos < len(buf):
                n = f.readinto(view[pos:])  # type: ignore[attr-defined]
                if not n:
                    raise InputError(f"{self.label}: entry {name!r} is truncated")
                pos += n
        return buf

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise InputError(f"{self.label}: {name} is not valid JSON ({e})") from e


def _weights_only_reason(e: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if m:
        return f"it names the Python object {m.group(1)}"
    for line in text.splitlines():
        if "WeightsUnpickler error" in line:
            return line.strip()[:200]
    return (text.strip().splitlines() or [type(e).__name__])[0][:200]


def _unpickle(data: bytes, what: str, label: str, trust: bool, hint: str = "") -> Any:
    """``torch.load`` with ``weights_only=True``; with ``trust`` only, the full unpickler."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        if not trust:
            raise InputError(
                f"{label}: {what} pickled objects that weights_only loading refuses ({_weights_only_reason(e)}); "
                f"unpickling them would run code from the file. {hint}Re-save the model with torch.export.save from "
                "plain tensors, or, only if you trust the file, pass --trust-pickle (trust_pickle=True)"
            ) from None
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _payloads(arc: _Archive, config_name: str, directory: str, kind: str, trust: bool) -> dict[str, Any]:
    from torch._export.serde import schema
    from torch._export.serde.serialize import (
        _dict_to_dataclass,
        deserialize_scalar_type,
        deserialize_size,
        deserialize_storage_offset,
        deserialize_stride,
    )

    config = _dict_to_dataclass(schema.PayloadConfig, arc.json(config_name))
    flat: dict[str, torch.Tensor] = {}
    out: dict[str, Any] = {}
    for fqn, meta in config.config.items():
        entry = directory + meta.path_name
        if not arc.has(entry):
            raise InputError(f"{arc.label}: {kind} {fqn!r} points to a missing entry {entry!r}")
        if meta.use_pickle or (kind == "constant" and not meta.path_name.startswith(_TENSOR_PREFIX)):
            if not trust:
                raise InputError(
                    f"{arc.label}: {kind} {fqn!r} is stored as a pickle ({meta.path_name}); unpickling it would run "
                    "code from the file. Re-save the model with plain tensors (no tensor subclasses or custom "
                    "objects), or, only if you trust the file, pass --trust-pickle (trust_pickle=True)"
                )
            data = arc.read(entry)
            if meta.path_name.startswith("custom_obj_"):
                out[fqn] = torch._C._pickle_load_obj(data)
            elif meta.path_name.startswith("opaque_obj_"):
                import pickle

                out[fqn] = pickle.loads(data)
            else:
                out[fqn] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
            continue
        tm = meta.tensor_meta
        if tm is None:
            raise InputError(f"{arc.label}: {kind} {fqn!r} has no tensor metadata")
        dtype = deserialize_scalar_type(tm.dtype)
        if meta.path_name not in flat:
            buf = arc.read_into(entry)
            size = torch._utils._element_size(dtype)
            if len(buf) % size:
                raise InputError(f"{arc.label}: {entry} holds {len(buf)} bytes, not a whole number of {dtype} values")
            flat[meta.path_name] = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        base = flat[meta.path_name]
        sizes = deserialize_size(tm.sizes)
        if base.numel() == 0 and math.prod(sizes) > 0:
            base = torch.zeros(math.prod(sizes), dtype=dtype)
        t = torch.as_strided(base, sizes, deserialize_stride(tm.strides), deserialize_storage_offset(tm.storage_offset))
        if meta.is_param:
            t = torch.nn.Parameter(t, requires_grad=bool(tm.requires_grad) and (t.is_floating_point() or t.is_complex()))
        out[fqn] = t
    return out


# ---- entry point ------------------------------------------------------------------------------
def _archive_prefix(zf: zipfile.ZipFile, label: str) -> str:
    prefixes = {n[: -len("archive_format")] for n in zf.namelist() if n.endswith("archive_format")}
    if len(prefixes) != 1:
        raise InputError(f"{label}: not one torch.export archive ({len(prefixes)} archive_format entries)")
    return prefixes.pop()


def read_pt2(
    path: str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    sample_inputs: bool = True,
) -> Pt2Contents:
    """Read the ExportedProgram in ``path`` (see the module docstring for what is refused).

    ``sample_inputs=False`` skips the stored example inputs (the caller has its own). Raises
    :class:`InputError` naming the file for anything corrupt, incompatible or unsafe.
    """
    label = str(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputError(f"{label} is not a readable zip archive: {e}") from e
    with zf:
        try:
            check_zip_sizes(zf, label)
            arc = _Archive(zf, _archive_prefix(zf, label), label)
            return _read(arc, trust_pickle, sample_inputs)
        except (InputError, MemoryError):
            raise
        except Exception as e:  # a corrupt archive (bad CRC, truncated entry, ...): data, not a bug
            text = str(e).strip()
            raise InputError(f"{label} is corrupt: {type(e).__name__}: {text.splitlines()[0][:300] if text else ''}") from e


def _read(arc: _Archive, trust: bool, want_inputs: bool) -> Pt2Contents:
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    label = arc.label
    fmt = arc.read("archive_format").decode(errors="replace").strip()
    version = arc.read("archive_version").decode(errors="replace").strip() if arc.has("archive_version") else "?"
    if fmt != "pt2" or version != "0":
        raise InputError(f"{label}: archive format {fmt!r} version {version!r} is not torch.export's pt2 version 0 (torch {torch.__version__})")
    if arc.has("byteorder") and arc.read("byteorder").decode(errors="replace").strip() != sys.byteorder:
        raise InputError(f"{label} was saved on a {arc.read('byteorder').decode(errors='replace')}-endian machine; this one is {sys.byteorder}")
    code = sorted(n for n in arc.names if n.startswith(_CODE_DIRS))
    if code:
        raise InputError(f"{label} carries compiled code ({code[0]}); graphprune loads only the exported program, not AOTInductor/ExecuTorch binaries")
    if not arc.has(_MODEL_JSON.format("model")):
        found = sorted(n for n in arc.names if n.startswith("models/"))
        raise InputError(f"{label}: no models/model.json in the archive (found {found[:3]})")
    program_json = arc.json(_MODEL_JSON.format("model"))
    check_program_json(program_json, label)

    def legacy_or_payloads(directory: str, config_fmt: str, kind: str) -> dict[str, Any]:
        legacy = f"{directory}model.pt"
        if arc.has(legacy):
            loaded = _unpickle(arc.read(legacy), f"the legacy {kind} file {legacy} holds", label, trust)
            if not isinstance(loaded, dict):
                raise InputError(f"{label}: {legacy} holds a {type(loaded).__name__}, not a dict of tensors")
            return loaded
        return _payloads(arc, config_fmt.format("model"), directory, kind, trust)

    try:
        state_dict = legacy_or_payloads(_WEIGHTS_DIR, _WEIGHTS_CONFIG, "weight")
        constants = legacy_or_payloads(_CONSTANTS_DIR, _CONSTANTS_CONFIG, "constant")
        for name in [*state_dict, *constants]:
            if not _SAFE_NAME.match(str(name)):
                raise InputError(f"{label}: tensor name {str(name)[:120]!r} is not a plain attribute name; refused")
        example: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        sample = _SAMPLE_INPUTS.format("model")
        data = arc.read(sample) if want_inputs and arc.has(sample) else b""
        if data:
            loaded = _unpickle(data, "the stored example inputs hold", label, trust, "Give --input-shape for each input instead (then they are not read). ")
            if not (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[0], tuple) and isinstance(loaded[1], dict)):
                raise InputError(f"{label}: stored example inputs are a {type(loaded).__name__}, not (args, kwargs)")
            example = loaded
        serialized = _dict_to_dataclass(schema.ExportedProgram, program_json)
        program = ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, example)
    except InputError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise InputError(
            f"{label}: the exported program cannot be rebuilt (corrupt, or saved by an incompatible torch; "
            f"this is {torch.__version__}): {type(e).__name__}: {first}"
        ) from e
    return Pt2Contents(program=program, example_inputs=example)


def is_pt2(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a zip holding a ``torch.export.save`` archive."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("archive_format") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False



IN_MEMORY_BYTES = 512 << 20  # write_pt2 builds archives of up to this many weight bytes in memory


def write_pt2(path: str | os.PathLike[str], program: torch.export.ExportedProgram) -> None:
    """``torch.export.save`` to ``path`` atomically, with a full disk an OutputError, not an abort.

    torch's zip writer aborts the process (C++ ``terminate``) when a write fails, also when given a
    Python file object. Up to :data:`IN_MEMORY_BYTES` of weights (and when there is memory for a
    second copy) the archive is therefore built in memory and written from Python; a larger model
    is not copied once more (that would raise compile's peak memory by 1x its weights): the free disk
    space is checked first and torch writes the file itself.
    """
    from graphprune.io.files import atomic_write, atomic_write_bytes, available_memory, output_error

    target = Path(path)
    size = sum(t.numel() * t.element_size() for t in program.state_dict.values() if isinstance(t, torch.Tensor))
    size += sum(t.numel() * t.element_size() for t in program.constants.values() if isinstance(t, torch.Tensor))
    avail = available_memory()
    if size <= IN_MEMORY_BYTES and (avail is None or 2 * size + (256 << 20) < avail):
        buf = io.BytesIO()
        torch.export.save(program, buf)
        atomic_write_bytes(target, buf.getvalue())
        return
    try:
        free = shutil.disk_usage(target.parent).free
    except OSError as e:
        raise output_error(target, e) from e
    if free < size + (64 << 20):
        raise output_error(target, OSError(errno.ENOSPC, "No space left on device"))
    atomic_write(target, lambda p: torch.export.save(program, str(p)))
