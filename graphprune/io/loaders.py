"""Turn what the user names (a file or a factory) into a model and example inputs.

Accepted:
- ``*.pt2``: a ``torch.export.save`` ExportedProgram (its stored example inputs are used), read by
  :mod:`graphprune.io.pt2` without unpickling or running anything from the file;
- a TorchScript file (``torch.jit.save``), needs ``--input-shape``; refused when its code calls file,
  network or native-class operations (its ``__setstate__`` would run inside ``torch.jit.load``);
- ``*.onnx``: pruned directly at the initializer level (see passes/onnx/prune_initializers.py);
- ``package.module:callable`` returning ``(model, example_inputs)`` (or a model, with ``--input-shape``);
- a whole pickled module (``torch.save(model)``) only with ``trust_pickle=True``: unpickling runs code.
A bare state_dict is recognized and rejected: it has no architecture.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from graphprune.errors import ConfigError, InputError
from graphprune.io.files import available_memory, check_zip_sizes

KindT = Literal["pt2", "torchscript", "onnx", "factory", "pickle", "hf"]

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "long": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


@dataclass
class LoadedModel:
    kind: KindT
    source: str
    path: Path | None
    model: nn.Module | None  # None for ONNX
    example_inputs: Any  # a tuple of positional inputs, or (factories) a dict of named ones; None for ONNX


def parse_input_shape(spec: str, *, seed: int = 0) -> torch.Tensor:
    """``"1,3,224,224"`` / ``"2x16:int64"`` / ``"2x16:int64:30522"`` -> a seeded example tensor.

    ``HIGH`` (integer dtypes only) is the exclusive upper bound of the random values (default 100).
    A tensor larger than the memory available is refused before it is allocated.
    """
    form = "SHAPE[:DTYPE[:HIGH]], e.g. 1,3,224,224 or 2x16:int64:30522"
    parts = spec.split(":")
    if len(parts) > 3:
        raise ConfigError(f"--input-shape {spec!r}: expected {form}")
    items = parts[0].replace("x", ",").split(",")
    try:
        shape = tuple(int(s) for s in items)
    except ValueError:
        raise ConfigError(f"--input-shape {spec!r}: the shape must be integers; expected {form}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ConfigError(f"--input-shape {spec!r}: every dimension must be a positive integer")
    dtype_name = parts[1] if len(parts) > 1 and parts[1] else "float32"
    if dtype_name not in _DTYPES:
        raise ConfigError(f"--input-shape {spec!r}: dtype {dtype_name!r} is not one of {sorted(_DTYPES)}")
    dtype = _DTYPES[dtype_name]
    integer = not dtype.is_floating_point and dtype != torch.bool
    high = 100
    if len(parts) > 2:
        if not integer:
            raise ConfigError(f"--input-shape {spec!r}: HIGH applies to integer dtypes only, not {dtype_name}")
        try:
            high = int(parts[2])
        except ValueError:
            raise ConfigError(f"--input-shape {spec!r}: HIGH {parts[2]!r} must be an integer >= 1") from None
        if high < 1:
            raise ConfigError(f"--input-shape {spec!r}: HIGH is the exclusive upper bound of the values, must be >= 1, got {high}")
        if high > torch.iinfo(dtype).max:
            raise ConfigError(f"--input-shape {spec!r}: HIGH {high} does not fit in {dtype_name}")
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    avail = available_memory()
    if nbytes > (avail if avail is not None else 2**62):
        raise ConfigError(
            f"--input-shape {spec!r} needs {nbytes / 2**30:.3g} GiB, more than the memory available "
            f"({(avail or 0) / 2**30:.3g} GiB); give a smaller shape"
        )
    gen = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    if dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool)
    return torch.randint(0, high, shape, generator=gen, dtype=dtype)


def load_model(
    source: str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    input_shapes: Sequence[str] = (),
) -> LoadedModel:
    """Load ``source`` (a path or ``package.module:callable``); errors name the file and say what to do.

    Nothing is unpickled with ``weights_only=False`` unless ``trust_pickle`` is True: a ``.pt2`` is read
    by :func:`graphprune.io.pt2.read_pt2`, a ``torch.save`` file with ``weights_only=True``.
    """
    try:
        return _load(source, trust_pickle, input_shapes)
    except OSError as e:
        raise InputError(f"model file {source} cannot be read: {e.strerror or e}") from e


def _load(source: str | os.PathLike[str], trust_pickle: bool, input_shapes: Sequence[str]) -> LoadedModel:
    text = str(source)
    path = Path(text)
    shaped = tuple(parse_input_shape(s, seed=i) for i, s in enumerate(input_shapes)) or None
    if not path.exists():
        if _looks_like_factory(text):
            return _load_factory(text, shaped)
        raise InputError(
            f"model file {text} does not exist; give a .pt2 (torch.export.save), TorchScript, .onnx file, "
            "or a factory as package.module:callable"
        )
    if path.is_dir():
        from graphprune.io.hf_folder import is_hf_folder, load_hf_folder

        if is_hf_folder(path):
            model, example = load_hf_folder(path, shaped, trust_pickle)
            return LoadedModel("hf", text, path, model, example)
        raise InputError(
            f"{text} is a directory without config.json; give a model file (.pt2, TorchScript, .onnx), a Hugging Face "
            "save_pretrained folder, or package.module:callable"
        )
    if path.stat().st_size == 0:
        raise InputError(f"model file {text} is empty (0 bytes)")
    if path.suffix.lower() == ".onnx":
        _check_onnx(path)
        return LoadedModel("onnx", text, path, None, None)
    if not zipfile.is_zipfile(path):
        if _looks_like_onnx(path):
            _check_onnx(path)
            return LoadedModel("onnx", text, path, None, None)
        raise InputError(
            f"model file {text} is not a PyTorch archive (.pt2 / TorchScript / torch.save) nor ONNX: "
            "it may be corrupt or truncated"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            check_zip_sizes(zf, text)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputError(f"model file {text} is a corrupt zip archive: {e}") from e
    if any(n.endswith("archive_format") for n in names):
        return _load_pt2(path, shaped, trust_pickle)
    if any(n.endswith("serialized_exported_program.json") for n in names):
        return _load_legacy_pt2(path, shaped, trust_pickle)
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") or n.endswith("data.pkl") for n in names):
        return _load_torchscript(path, shaped)
    if any(n.endswith("data.pkl") for n in names):
        return _load_pickle(path, shaped, trust_pickle)
    raise InputError(f"model file {text} is a zip archive of an unknown kind (no ExportedProgram, TorchScript or pickle inside)")


def _looks_like_factory(text: str) -> bool:
    mod, sep, attr = text.partition(":")
    return bool(sep) and bool(mod) and bool(attr) and all(p.isidentifier() for p in mod.split(".")) and attr.replace(".", "").isidentifier()


def _looks_like_onnx(path: Path) -> bool:
    try:
        import onnx

        onnx.load(str(path), load_external_data=False)
        return True
    except Exception:
        return False


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise InputError(f"ONNX file {path} cannot be read: {e}") from e
    try:
        onnx.checker.check_model(model, full_check=False)
    except Exception as e:
        raise InputError(f"ONNX file {path} fails onnx.checker: {str(e).splitlines()[0]}") from e


def _need_inputs(path: Path | str, kind: str, shaped: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, ...]:
    if shaped is None:
        raise InputError(
            f"{kind} model {path} has no stored example inputs: pass --input-shape for each input, "
            "e.g. --input-shape 1,3,224,224 or --input-shape 2x16:int64:30522"
        )
    return shaped


def _load_pt2(path: Path, shaped: tuple[torch.Tensor, ...] | None, trust: bool) -> LoadedModel:
    from graphprune.io.pt2 import read_pt2

    contents = read_pt2(path, trust_pickle=trust, sample_inputs=shaped is None)
    example: tuple[Any, ...] | None = shaped
    if example is None and contents.example_inputs is not None:
        args, kwargs = contents.example_inputs
        if kwargs:
            raise InputError(f"ExportedProgram {path} was exported with keyword inputs; pass --input-shape for each input")
        example = tuple(args)
    example = _need_inputs(path, "ExportedProgram", example)
    try:
        module = _as_module(contents.program)
    except Exception as e:
        raise InputError(f"ExportedProgram {path} cannot be turned into a module: {_first_line(e)}") from e
    return LoadedModel("pt2", str(path), path, module, example)


def _as_module(program: torch.export.ExportedProgram) -> nn.Module:
    """``program.module()`` with a working ``eval()`` / ``train()``: torch makes them raise on the unlifted
    module (they cannot change an exported graph); graphprune calls ``eval()`` on every model it runs, and
    for an exported graph that is the no-op it should be, so the instance-level overrides are dropped."""
    module = program.module()
    for name in ("train", "eval"):
        module.__dict__.pop(name, None)
    return module


def _load_legacy_pt2(path: Path, shaped: tuple[torch.Tensor, ...] | None, trust: bool) -> LoadedModel:
    """torch < 2.8 archives store the state dict and example inputs as pickles: trusted files only."""
    if not trust:
        raise InputError(
            f"{path} is an ExportedProgram in the old (torch < 2.8) format, whose weights are pickled; unpickling "
            "runs code from the file. Re-save it with torch.export.save on this torch, or, only if you trust the "
            "file, pass --trust-pickle"
        )
    try:
        ep = torch.export.load(str(path))
    except Exception as e:
        raise InputError(f"ExportedProgram {path} cannot be loaded: {_first_line(e)}") from e
    example: tuple[Any, ...] | None = shaped
    if example is None and getattr(ep, "example_inputs", None) is not None:
        example = tuple(ep.example_inputs[0])
    return LoadedModel("pt2", str(path), path, _as_module(ep), _need_inputs(path, "ExportedProgram", example))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


# TorchScript code cannot import or call Python, but these operations reach files, the network or
# native objects; __setstate__ methods run inside torch.jit.load, before any graph could be inspected.
_TORCHSCRIPT_DENIED = re.compile(
    r"\b(torch\.save|torch\.from_file|ops\.aten\.(save|from_file)|ops\.(debugprims|profiler|c10d)\."
    r"|torch\.classes\.|torch\.distributed|rpc_sync|rpc_async)"
)


def _check_torchscript_code(path: Path) -> None:
    """Refuse a TorchScript archive whose code touches files, the network or custom native classes."""
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if "/code/" not in name or not name.endswith(".py"):
                continue
            text = zf.read(name).decode("utf-8", errors="replace")
            m = _TORCHSCRIPT_DENIED.search(text)
            if m:
                line = text.count("\n", 0, m.start()) + 1
                raise InputError(
                    f"TorchScript file {path}: {name.split('/code/', 1)[1]}:{line} calls {m.group(0)!r}, which reaches "
                    "files, the network or native objects; graphprune runs no such code from a model file. "
                    "Export the model with torch.export.save instead"
                )


def _load_torchscript(path: Path, shaped: tuple[torch.Tensor, ...] | None) -> LoadedModel:
    _check_torchscript_code(path)
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise InputError(f"TorchScript file {path} cannot be loaded: {_first_line(e)}") from e
    return LoadedModel("torchscript", str(path), path, model, _need_inputs(path, "TorchScript", shaped))


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, (torch.Tensor, Mapping)) for k, v in obj.items()
    )


def _load_pickle(path: Path, shaped: tuple[torch.Tensor, ...] | None, trust: bool) -> LoadedModel:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        if "Weights only load failed" not in str(e) and "weights_only" not in str(e):
            raise InputError(f"checkpoint {path} cannot be read: {str(e).splitlines()[0]}") from e
        if not trust:
            raise InputError(
                f"{path} holds a pickled Python object (a whole nn.Module); unpickling it runs arbitrary code. "
                "Re-save it with torch.export.save(...) as .pt2, give a factory as package.module:callable, "
                "or, only if you trust the file, pass --trust-pickle"
            ) from None
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e2:
            raise InputError(f"pickled model {path} cannot be loaded even with --trust-pickle: {e2}") from e2
    if _is_state_dict(obj):
        keys = list(obj)[:3]
        raise InputError(
            f"{path} is a state_dict (tensors named {keys}...), not a model: the architecture is needed. "
            "Give a factory (package.module:callable returning (model, example_inputs)) that builds the model "
            "and loads this state_dict, or a .pt2 from torch.export.save"
        )
    if not isinstance(obj, nn.Module):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module")
    return LoadedModel("pickle", str(path), path, obj, _need_inputs(path, "pickled", shaped))


def _import_factory_module(spec: str, mod_name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # last: a local file named like a dependency must not shadow it
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise InputError(f"factory {spec}: cannot import module {mod_name!r}: {e}") from e
        raise InputError(f"factory {spec}: importing {mod_name!r} failed: {_first_line(e)}") from e
    except MemoryError:
        raise
    except SystemExit as e:
        raise InputError(f"factory {spec}: importing {mod_name!r} called sys.exit({e.code!r})") from None
    except Exception as e:  # SyntaxError, or anything the module raises while it is imported
        raise InputError(f"factory {spec}: importing {mod_name!r} failed: {_first_line(e)}") from e


def _load_factory(spec: str, shaped: tuple[torch.Tensor, ...] | None) -> LoadedModel:
    mod_name, _, attr = spec.partition(":")
    mod = _import_factory_module(spec, mod_name)
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"factory {spec}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    try:
        result = obj() if callable(obj) and not isinstance(obj, nn.Module) else obj
    except MemoryError:
        raise
    except SystemExit as e:
        raise InputError(
            f"factory {spec} called sys.exit({e.code!r}) instead of returning (model, example_inputs)"
        ) from None
    except Exception as e:
        raise InputError(f"factory {spec} raised {_first_line(e)}") from e
    model: Any
    example: Any
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module):
        model, example = result
        if shaped is not None:
            example = shaped
        if isinstance(example, torch.Tensor):
            example = (example,)
        if isinstance(example, list):
            example = tuple(example)
        if not isinstance(example, (tuple, Mapping)):
            raise InputError(
                f"factory {spec}: example inputs must be a tuple of positional inputs or a dict of named ones, "
                f"got {type(example).__name__}"
            )
    elif isinstance(result, nn.Module):
        model, example = result, _need_inputs(spec, "factory", shaped)
    else:
        raise InputError(
            f"factory {spec} returned {type(result).__name__}; it must return (model, example_inputs) or a model"
        )
    return LoadedModel("factory", spec, None, model, example)
