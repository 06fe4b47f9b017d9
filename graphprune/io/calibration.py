"""Calibration and evaluation data for ``compile``: where batches come from, checked before any work.

A SOURCE (CLI ``--calib`` / ``--eval``; API ``calibration=`` / ``evaluation=``) is one of:

- ``package.module:callable`` — called with no arguments, it returns an iterable of batches, each a
  tuple of positional inputs like the model's example inputs (a lone tensor is a 1-tuple);
- a ``.safetensors`` or ``.npz`` file holding one stacked tensor per positional input, named
  ``input_0``, ``input_1``, ... (``.npz`` written by ``np.savez(f, a, b)`` may keep numpy's ``arr_0``,
  ``arr_1``), first axis = samples; it is cut into batches of ``batch_size`` samples. Files are data,
  never code: ``np.load(allow_pickle=False)``, safetensors without pickle;
- (API) any iterable of batches.

Checks (each an :class:`~graphprune.errors.InputError` naming the source, batch and input; exit 3):
the source does not import or is not callable, returns nothing or no batches; a batch has the wrong
number of inputs, or an input the wrong dtype or number of dims compared with the example inputs, or
NaN/Inf values; a file with missing or extra arrays, arrays with different sample counts, object
arrays. Shapes along free axes (batch, sequence length) may differ from the example inputs; a size the
model cannot take fails in the calibration pass, which runs every batch through the model before it
prunes (naming the batch).

:func:`split_sources` picks the evaluation batches: the ``--eval`` source; else a held-back part of
the calibration batches; else the example inputs (with a note that this is a weak check). The same
object (or source string) given for both gets a warning note.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from graphprune.errors import ConfigError, InputError

__all__ = ["Sources", "batch_leaves", "check_batch", "describe_batch", "load_batches", "split_sources"]

_FILE_SUFFIXES = (".safetensors", ".npz")


def _dt(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def batch_leaves(batch: Any) -> list[tuple[str, Any]]:
    """(name, value) of a batch's inputs: ``input`` for a lone tensor, ``input[i]`` for a tuple, keys of a mapping."""
    if isinstance(batch, torch.Tensor):
        return [("input", batch)]
    if isinstance(batch, Mapping):
        return [(str(k), v) for k, v in batch.items()]
    if isinstance(batch, (tuple, list)):
        return [(f"input[{i}]", v) for i, v in enumerate(batch)]
    return [("input", batch)]


def describe_batch(batch: Any) -> str:
    """``input[0]: int64[2, 7], input[1]: float32[2, 7, 3]``."""
    return ", ".join(
        f"{n}: {_dt(v)}{list(v.shape)}" if isinstance(v, torch.Tensor) else f"{n}: {type(v).__name__}"
        for n, v in batch_leaves(batch)
    )


def check_batch(
    batch: Any, index: int, *, reference: Any = None, what: str = "calibration", origin: str = "", ref_name: str = "the example inputs"
) -> None:
    """The one check of a batch (InputError naming the batch and input): the same inputs as ``reference``
    (names / arity), each of its dtype and number of dims (sizes may differ), floating inputs finite.
    ``origin``: where the batch came from, e.g. the SOURCE string."""
    where = f"{what} batch {index}" + (f" from {origin}" if origin else "")
    if reference is not None:
        a, b = batch_leaves(reference), batch_leaves(batch)
        if isinstance(reference, Mapping) and isinstance(batch, Mapping):  # named inputs: any order
            a, b = sorted(a, key=lambda kv: kv[0]), sorted(b, key=lambda kv: kv[0])
        if [n for n, _ in a] != [n for n, _ in b]:
            raise InputError(
                f"{where} has inputs ({describe_batch(batch)}) but {ref_name} had ({describe_batch(reference)}); "
                "every batch must have the same inputs"
            )
        for (name, x), (_, y) in zip(a, b):
            if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
                raise InputError(f"{where}: input {name!r} is a {type(y).__name__}, in {ref_name} a {type(x).__name__}")
            if isinstance(x, torch.Tensor):
                for wrong, bad in (("dtype", x.dtype != y.dtype), ("shape", x.dim() != y.dim())):
                    if bad:
                        raise InputError(
                            f"{where}: input {name!r} is {_dt(y)}{list(y.shape)}, in {ref_name} it is "
                            f"{_dt(x)}{list(x.shape)} (wrong {wrong})"
                        )
    for name, v in batch_leaves(batch):
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise InputError(
                f"{where}: input {name!r} ({_dt(v)}{list(v.shape)}) has {int((~torch.isfinite(v)).sum())} NaN/Inf value(s)"
            )


def _as_batch(b: Any, index: int, what: str, origin: str, named: bool = False) -> Any:
    """A batch as a tuple of positional inputs, or a dict of named inputs when the example inputs are named
    (``named``; the copy stage binds it to the forward as it binds the example)."""
    if isinstance(b, torch.Tensor):
        return (b,)
    if isinstance(b, (tuple, list)):
        return tuple(b)
    if isinstance(b, Mapping):
        if named:
            return dict(b)
        raise InputError(
            f"{what} batch {index} from {origin} is a mapping ({', '.join(map(str, b))}) but the example inputs are "
            "positional: yield tuples in the order of the example inputs (or give named example inputs)"
        )
    raise InputError(
        f"{what} batch {index} from {origin} is a {type(b).__name__}; yield tuples of tensors (positional inputs)"
    )


def check_against(
    batches: Sequence[tuple[Any, ...]], reference: tuple[Any, ...] | None, *, what: str, origin: str
) -> None:
    """:func:`check_batch` for every batch against the example inputs."""
    for i, b in enumerate(batches):
        check_batch(b, i, reference=reference, what=what, origin=origin)


def _import_callable(spec: str, what: str) -> Any:
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise InputError(f"{what} source {spec!r}: expected package.module:callable or a .safetensors / .npz file")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # ImportError, or the module failed while importing
        raise InputError(f"{what} source {spec}: cannot import module {mod_name!r}: {type(e).__name__}: {e}") from e
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{what} source {spec}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"{what} source {spec}: {attr!r} is a {type(obj).__name__}, not a callable returning batches")
    try:
        return obj()
    except Exception as e:
        raise InputError(f"{what} source {spec}: calling {attr}() failed: {type(e).__name__}: {e}") from e


def _read_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"{what} file {path} does not exist")
    if path.suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except ValueError as e:  # object arrays need pickle: refused
            raise InputError(f"{what} file {path}: {e} (object arrays are refused: files are data, never code)") from e
        except Exception as e:
            raise InputError(f"{what} file {path} is not a readable .npz archive: {type(e).__name__}: {e}") from e
        out = {}
        for k, a in arrays.items():
            if a.dtype.kind not in "biuf":
                raise InputError(f"{what} file {path}: array {k!r} has dtype {a.dtype}, not a number type")
            out[k] = torch.from_numpy(np.ascontiguousarray(a))
        return out
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"{what} file {path} could not be read as safetensors: {type(e).__name__}: {e}") from e


def _file_batches(
    path: Path, batch_size: int, reference: tuple[Any, ...] | None, what: str
) -> list[tuple[torch.Tensor, ...]]:
    tensors = _read_file(path, what)
    if not tensors:
        raise InputError(f"{what} file {path} holds no arrays")
    n = len(reference) if reference is not None else len(tensors)
    for prefix in ("input_", "arr_"):
        want = [f"{prefix}{i}" for i in range(n)]
        if any(k in tensors for k in want):
            break
    missing = [k for k in want if k not in tensors]
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        raise InputError(
            f"{what} file {path} must hold one array per positional input, named {', '.join(want)} (the model takes {n}); "
            + (f"missing: {', '.join(missing)}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"extra: {', '.join(extra)}" if extra else "")
        )
    stacked = [tensors[k] for k in want]
    counts = {k: int(t.shape[0]) if t.dim() else 0 for k, t in zip(want, stacked)}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise InputError(
            f"{what} file {path}: every array's first axis counts samples and must be the same (and > 0); got "
            + ", ".join(f"{k}: {c}" for k, c in counts.items())
        )
    total = next(iter(counts.values()))
    return [tuple(t[i : i + batch_size] for t in stacked) for i in range(0, total, batch_size)]


def load_batches(
    source: Any,
    *,
    batch_size: int = 8,
    reference: tuple[Any, ...] | None = None,
    what: str = "calibration",
    max_batches: int | None = None,
) -> list[tuple[Any, ...]]:
    """Read a SOURCE (module docstring) into a checked list of batches (tuples of positional inputs).

    ``reference``: the model's example inputs (arity, dtypes and number of dims to match).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"calibration batch size must be an int >= 1, got {batch_size!r}")
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.endswith(_FILE_SUFFIXES):
            origin = text
            batches: list[tuple[Any, ...]] = list(_file_batches(Path(text), batch_size, reference, what))
        elif ":" in text:
            origin = text
            produced = _import_callable(text, what)
            if produced is None:
                raise InputError(f"{what} source {text} returned nothing (None); return an iterable of input tuples")
            batches = _collect(produced, what, origin, max_batches, named=isinstance(reference, Mapping))
        else:
            raise InputError(
                f"{what} source {text!r}: expected package.module:callable or a file ending in .safetensors or .npz"
            )
    else:
        origin = f"the given {type(source).__name__}"
        batches = _collect(source, what, origin, max_batches, named=isinstance(reference, Mapping))
    if max_batches is not None:
        batches = batches[:max_batches]
    if not batches:
        raise InputError(f"{what} source {origin} gave no batches")
    check_against(batches, reference, what=what, origin=origin)
    return batches


def _collect(produced: Any, what: str, origin: str, max_batches: int | None, *, named: bool = False) -> list[Any]:
    if isinstance(produced, (torch.Tensor, Mapping, str, bytes)) or not isinstance(produced, Iterable):
        raise InputError(
            f"{what} source {origin} gave a {type(produced).__name__}; it must give an iterable of batches "
            "(tuples of positional inputs), e.g. a list of (input_ids, attention_mask) tuples"
        )
    out = []
    for i, b in enumerate(produced):
        if max_batches is not None and i >= max_batches:
            break
        out.append(_as_batch(b, i, what, origin, named))
    return out


@dataclass
class Sources:
    """The batches compile calibrates and evaluates on, and where the evaluation batches came from."""

    calibration: list[tuple[Any, ...]]
    evaluation: list[tuple[Any, ...]]
    eval_source: str  # "eval" | "calibration holdout" | "example inputs"
    notes: list[str] = field(default_factory=list)


def split_sources(
    calibration: list[tuple[Any, ...]] | None,
    evaluation: list[tuple[Any, ...]] | None,
    example_inputs: tuple[Any, ...],
    *,
    holdout: float = 0.2,
    same_source: bool = False,
) -> Sources:
    """Choose the evaluation batches (see the module docstring).

    ``holdout``: fraction of the calibration batches held back for evaluation when no evaluation data is
    given (at least one batch, only when there are at least two). ``same_source``: the caller saw the same
    SOURCE string for both.
    """
    if not 0 < holdout < 1:
        raise ConfigError(f"holdout must be in (0, 1), got {holdout!r}")
    notes: list[str] = []
    cal = list(calibration or [])
    if evaluation is not None:
        ev = list(evaluation)
        shared = same_source or evaluation is calibration or (
            bool(cal) and len(ev) == len(cal) and all(a is b for a, b in zip(ev, cal))
        )
        if shared:
            notes.append(
                "warning: the evaluation data is the calibration data; fidelity measured on the batches the masks "
                "were fitted to reads better than it will on unseen inputs — give separate --eval data"
            )
        return Sources(cal, ev, "eval", notes)
    if len(cal) >= 2:
        # every stride-th batch (not the last ones: sources often sort batches, e.g. by length)
        stride = max(2, round(1 / holdout))
        held = set(range(stride - 1, len(cal), stride)) or {len(cal) - 1}
        notes.append(
            f"fidelity measured on {len(held)} of {len(cal)} calibration batches held back from calibration "
            "(no --eval given)"
        )
        return Sources(
            [b for i, b in enumerate(cal) if i not in held], [cal[i] for i in sorted(held)], "calibration holdout", notes
        )
    notes.append(
        "fidelity measured on the example inputs only (no --eval and too little calibration data to hold some back): "
        "a weak check of a few samples; give --eval data"
    )
    return Sources(cal, [tuple(example_inputs)], "example inputs", notes)
