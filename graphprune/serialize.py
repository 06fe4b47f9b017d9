"""Save and load structurally pruned models without pickling them.

A pruned model is stored as two files in a folder:

``delta.json``          the architecture delta from :func:`graphprune.structured.prune_structured`:
                        the new shape of every sliced tensor, the module attributes changed
                        (``out_features``, ``num_heads``, ...) and the HF config fields changed;
``model.safetensors``   the pruned state_dict (``safetensors.torch.save_model``, which keeps one copy
                        of tied tensors).

:func:`load` rebuilds the pruned architecture from the ORIGINAL constructor (``base``): it replaces
each listed tensor by an empty one of the new shape (at every tied alias), sets the recorded module
attributes and config fields, swaps in the module classes the delta names (only those in
:data:`graphprune.layers.CLASSES`, e.g. ``SlimMultiheadAttention`` for an ``nn.MultiheadAttention``
with heads removed), then loads the safetensors strictly. Nothing is unpickled or imported by name.

HF models also round-trip through ``save_pretrained`` / ``from_pretrained`` where the config can
express the new sizes (uniform per-layer counts; heads only for configs with an explicit
``head_dim`` such as Llama's). :func:`save_pretrained` writes both forms into one folder, so
``load(folder, base)`` works for every model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphprune.errors import InputError, OutputError
from graphprune.layers import CLASSES

# module attributes that are lists, not tuples (JSON stores both as arrays)
LIST_ATTRS = frozenset({"kept_heads"})

DELTA_FILE = "delta.json"
WEIGHTS_FILE = "model.safetensors"
DELTA_FORMAT = "graphprune.structured-delta/1"


def _delta_of(delta: Mapping[str, Any] | Any) -> dict[str, Any]:
    d = getattr(delta, "delta", delta)  # accept a StructuredResult
    if not isinstance(d, Mapping) or d.get("format") != DELTA_FORMAT:
        raise InputError(f"not a graphprune architecture delta (expected format {DELTA_FORMAT!r})")
    return dict(d)


def save_pruned(model: nn.Module, path_dir: str | Path, delta: Mapping[str, Any] | Any) -> Path:
    """Write ``delta.json`` and ``model.safetensors`` into ``path_dir`` (created if missing)."""
    from safetensors.torch import save_model

    from graphprune._io import atomic_write, atomic_write_text

    d = _delta_of(delta)
    out = Path(path_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output folder {out}: {e}") from e
    atomic_write_text(out / DELTA_FILE, json.dumps(d, indent=1, sort_keys=True))
    atomic_write(out / WEIGHTS_FILE, lambda p: save_model(model, str(p), metadata={"format": "pt", "graphprune": DELTA_FORMAT}))
    return out


def save_pretrained(model: nn.Module, path_dir: str | Path, delta: Mapping[str, Any] | Any, **kwargs: Any) -> Path:
    """``model.save_pretrained(path_dir)`` plus ``delta.json`` (so :func:`load` works too)."""
    from graphprune._io import atomic_write_text

    d = _delta_of(delta)
    if not hasattr(model, "save_pretrained"):
        raise InputError(f"{type(model).__name__} has no save_pretrained (not a transformers model); use save_pruned")
    out = Path(path_dir)
    model.save_pretrained(str(out), **kwargs)  # type: ignore[operator]
    atomic_write_text(out / DELTA_FILE, json.dumps(d, indent=1, sort_keys=True))
    return out


def read_delta(path_dir: str | Path) -> dict[str, Any]:
    p = Path(path_dir) / DELTA_FILE
    try:
        return _delta_of(json.loads(p.read_text()))
    except FileNotFoundError:
        raise InputError(f"{p} does not exist: not a folder written by graphprune.save_pruned") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{p} is not valid JSON: {e}") from e


def apply_delta(model: nn.Module, delta: Mapping[str, Any]) -> nn.Module:
    """Give ``model`` (built by the original constructor) the pruned shapes and attributes, in place.

    Tensor values are left uninitialized (zeros): load the weights afterwards.
    """
    from graphprune._module_tensors import get_tensor, replace_tensor, tensor_refs

    d = _delta_of(delta)
    refs = tensor_refs(model)
    for fqn, shape in d.get("tensors", {}).items():
        try:
            old = get_tensor(model, fqn)
        except (KeyError, AttributeError) as e:
            raise InputError(f"the base model has no tensor {fqn!r} named in the delta: wrong base constructor?") from e
        if list(old.shape) == list(shape):
            continue
        if len(old.shape) != len(shape):
            raise InputError(f"delta gives {fqn} rank {len(shape)} but the base model's is {len(old.shape)}: wrong base?")
        replace_tensor(model, fqn, torch.zeros(shape, dtype=old.dtype, device=old.device), refs)
        refs = tensor_refs(model)
    for mname, attrs in d.get("modules", {}).items():
        try:
            mod = model.get_submodule(mname) if mname else model
        except AttributeError as e:
            raise InputError(f"the base model has no module {mname!r} named in the delta: wrong base constructor?") from e
        for k, v in attrs.items():
            setattr(mod, k, list(v) if k in LIST_ATTRS else tuple(v) if isinstance(v, list) else v)
    for mname, cls_name in d.get("classes", {}).items():
        cls = CLASSES.get(cls_name)
        if cls is None:
            raise InputError(
                f"the delta asks for module class {cls_name!r} at {mname!r}, which is not one graphprune installs "
                f"({sorted(CLASSES)}): the delta was not written by this version of graphprune"
            )
        mod = model.get_submodule(mname) if mname else model
        if not isinstance(mod, cls.__mro__[1]):
            raise InputError(f"module {mname!r} is a {type(mod).__name__}, not a {cls.__mro__[1].__name__}: wrong base constructor?")
        mod.__class__ = cls
    cfg = getattr(model, "config", None)
    if cfg is not None:
        for k, v in d.get("config", {}).items():
            setattr(cfg, k, v)
    return model


def load(path_dir: str | Path, base: nn.Module | Callable[[], nn.Module], *, strict: bool = True) -> nn.Module:
    """Rebuild a pruned model saved by :func:`save_pruned` (or :func:`save_pretrained`).

    ``base``: the original (dense) model, or a callable that builds it; a module is modified in
    place and returned. Weights come from ``model.safetensors`` (or the HF weight file beside it).
    """
    from safetensors.torch import load_file, load_model

    folder = Path(path_dir)
    delta = read_delta(folder)
    model = base() if callable(base) and not isinstance(base, nn.Module) else base
    if not isinstance(model, nn.Module):
        raise InputError(f"base must be an nn.Module or a callable returning one, got {type(model).__name__}")
    apply_delta(model, delta)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise InputError(f"{weights} does not exist")
    meta_ours = False
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            meta_ours = (f.metadata() or {}).get("graphprune") == DELTA_FORMAT
    except Exception as e:
        raise InputError(f"{weights} is not a readable safetensors file: {e}") from e
    if meta_ours:
        missing, unexpected = load_model(model, str(weights), strict=strict)
    else:  # written by save_pretrained: HF names, tied weights stored once
        state = load_file(str(weights))
        result = model.load_state_dict(state, strict=False)
        tied = {n for n in result.missing_keys if _is_tied_alias(model, n)}
        missing = [n for n in result.missing_keys if n not in tied]
        unexpected = list(result.unexpected_keys)
        if strict and (missing or unexpected):
            raise InputError(f"weights in {weights} do not match the rebuilt model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def _is_tied_alias(model: nn.Module, name: str) -> bool:
    from graphprune._module_tensors import tensor_refs

    for aliases in tensor_refs(model).values():
        names = [a[0] for a in aliases]
        if name in names and len(names) > 1:
            return True
    return False


__all__ = ["DELTA_FILE", "WEIGHTS_FILE", "apply_delta", "load", "read_delta", "save_pretrained", "save_pruned"]
