"""Calibration and evaluation batches: their structure, checks and how the model is called on them.

A batch is a tensor (``model(x)``), a tuple/list (``model(*batch)``) or a mapping (``model(**batch)``).
Every batch must have the structure of the reference (the first batch, or compile's example inputs):
the same inputs, number of dims and dtypes; floating inputs must be finite. A mismatch raises
:class:`~graphprune.errors.InputError` naming the batch and the input, before any pruning work.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from graphprune.errors import InputError

__all__ = ["check_batches", "default_forward", "describe_batch", "materialize", "to_device"]


def _leaves(batch: Any) -> list[tuple[str, Any]]:
    if isinstance(batch, torch.Tensor):
        return [("input", batch)]
    if isinstance(batch, Mapping):
        return [(str(k), v) for k, v in batch.items()]
    if isinstance(batch, (tuple, list)):
        return [(f"input[{i}]", v) for i, v in enumerate(batch)]
    return [("input", batch)]


def _dt(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def describe_batch(batch: Any) -> str:
    parts = []
    for name, v in _leaves(batch):
        if isinstance(v, torch.Tensor):
            parts.append(f"{name}: {_dt(v)}{list(v.shape)}")
        else:
            parts.append(f"{name}: {type(v).__name__}")
    return ", ".join(parts)


def _check_like(reference: Any, batch: Any, index: int, what: str, ref_name: str) -> None:
    a, b = _leaves(reference), _leaves(batch)
    if [n for n, _ in a] != [n for n, _ in b]:
        raise InputError(
            f"{what} batch {index} has inputs ({describe_batch(batch)}) but {ref_name} had "
            f"({describe_batch(reference)}); every batch must have the same inputs"
        )
    for (name, x), (_, y) in zip(a, b):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            raise InputError(
                f"{what} batch {index}: input {name!r} is {type(y).__name__}, {ref_name}'s was {type(x).__name__}"
            )
        if isinstance(x, torch.Tensor):
            if x.dtype != y.dtype:
                raise InputError(
                    f"{what} batch {index}: input {name!r} is {_dt(y)}{list(y.shape)}, {ref_name}'s was "
                    f"{_dt(x)}{list(x.shape)} (wrong dtype)"
                )
            if x.dim() != y.dim():
                raise InputError(
                    f"{what} batch {index}: input {name!r} is {_dt(y)}{list(y.shape)}, {ref_name}'s was "
                    f"{_dt(x)}{list(x.shape)} (wrong shape)"
                )


def _check_finite(batch: Any, index: int, what: str) -> None:
    for name, v in _leaves(batch):
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise InputError(f"{what} batch {index}: input {name!r} ({_dt(v)}{list(v.shape)}) has {bad} NaN/Inf value(s)")


def check_batches(batches: list[Any], *, reference: Any = None, what: str = "calibration") -> None:
    """Raise InputError unless every batch has ``reference``'s structure (default: the first batch's)
    and finite floating inputs. ``reference`` is e.g. compile's example inputs."""
    ref, ref_name = (reference, "the example inputs") if reference is not None else (batches[0] if batches else None, "the first batch")
    for i, b in enumerate(batches):
        if ref is not None and not (reference is None and i == 0):
            _check_like(ref, b, i, what, ref_name)
        _check_finite(b, i, what)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def materialize(
    calibration: Iterable[Any] | None,
    max_batches: int | None = None,
    *,
    reference: Any = None,
    what: str = "calibration",
) -> list[Any]:
    """Read ``calibration`` (any iterable of batches; a one-shot iterator is read once) into a checked list."""
    if calibration is None:
        raise InputError(f"{what} data is required for Wanda and SparseGPT (give an iterable of batches)")
    if isinstance(calibration, (torch.Tensor, Mapping, str, bytes)):
        raise InputError(
            f"{what} data must be an iterable of batches (e.g. a list of tensors or a DataLoader), got one "
            f"{type(calibration).__name__}; wrap a single batch in a list"
        )
    try:
        it = iter(calibration)
    except TypeError:
        raise InputError(
            f"{what} data must be an iterable of batches (e.g. a list of tensors or a DataLoader), got "
            f"{type(calibration).__name__}"
        ) from None
    batches: list[Any] = []
    for i, b in enumerate(it):
        if max_batches is not None and i >= max_batches:
            break
        batches.append(b)
    if not batches:
        raise InputError(f"{what} data is empty: give at least one batch")
    check_batches(batches, reference=reference, what=what)
    return batches
