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
from graphprune.io.calibration import check_batch, describe_batch

__all__ = ["check_batches", "default_forward", "describe_batch", "materialize", "to_device"]


def check_batches(batches: list[Any], *, reference: Any = None, what: str = "calibration") -> None:
    """Raise InputError unless every batch has ``reference``'s structure (default: the first batch's)
    and finite floating inputs (:func:`graphprune.io.calibration.check_batch`, the one rule)."""
    ref, ref_name = (reference, "the example inputs") if reference is not None else (batches[0] if batches else None, "the first batch")
    for i, b in enumerate(batches):
        check_batch(b, i, reference=None if (reference is None and i == 0) else ref, what=what, ref_name=ref_name)


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
