"""Calibration plumbing for one-shot pruning: batches, and how a layer's inputs become rows ``[T, K]``.

Batches: a tensor (``model(x)``), a tuple/list (``model(*batch)``) or a mapping (``model(**batch)``).
Every batch must have the structure of the first (same inputs, number of dims and dtypes); a
mismatch raises InputError naming the batch and the input.

Layer views: the maths in ``graphprune.sparsity.oneshot`` takes 2-D weights. Linear ``[out, in]``
and transformers Conv1D ``[in, out]`` are used as they are (K on axis 1 / 0); a Conv1d/Conv2d
(groups=1, zero padding) is the linear map ``[O, kh·kw·C]`` on unfolded patches, channels innermost,
so N:M groups stay M consecutive input channels of one kernel position.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from graphprune.analysis.module_sites import SiteEntry, _is_hf_conv1d
from graphprune.errors import InputError
from graphprune.sparsity.oneshot import HessianAccumulator, InputNormAccumulator

__all__ = ["Layer", "default_forward", "describe_batch", "layer_for", "materialize", "to_device"]


# --------------------------------------------------------------------------- batches


def _leaves(batch: Any) -> list[tuple[str, Any]]:
    if isinstance(batch, torch.Tensor):
        return [("input", batch)]
    if isinstance(batch, Mapping):
        return [(str(k), v) for k, v in batch.items()]
    if isinstance(batch, (tuple, list)):
        return [(f"input[{i}]", v) for i, v in enumerate(batch)]
    return [("input", batch)]


def describe_batch(batch: Any) -> str:
    parts = []
    for name, v in _leaves(batch):
        if isinstance(v, torch.Tensor):
            parts.append(f"{name}: {str(v.dtype).removeprefix('torch.')}{list(v.shape)}")
        else:
            parts.append(f"{name}: {type(v).__name__}")
    return ", ".join(parts)


def _check_like_first(first: Any, batch: Any, index: int) -> None:
    a, b = _leaves(first), _leaves(batch)
    if [n for n, _ in a] != [n for n, _ in b]:
        raise InputError(
            f"calibration batch {index} has inputs ({describe_batch(batch)}) but the first batch had "
            f"({describe_batch(first)}); every batch must have the same inputs"
        )
    for (name, x), (_, y) in zip(a, b):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            raise InputError(
                f"calibration batch {index}: input {name!r} is {type(y).__name__}, the first batch's was {type(x).__name__}"
            )
        if isinstance(x, torch.Tensor):
            if x.dim() != y.dim() or x.dtype != y.dtype:
                raise InputError(
                    f"calibration batch {index}: input {name!r} is {str(y.dtype).removeprefix('torch.')}{list(y.shape)}, "
                    f"the first batch's was {str(x.dtype).removeprefix('torch.')}{list(x.shape)} (wrong shape)"
                )


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


# --------------------------------------------------------------------------- layer views


@dataclass
class Layer:
    """How one site looks to the maths: a 2-D weight view and calibration rows in the same K order."""

    entry: SiteEntry
    kind: str  # "linear" (x @ W.T), "hf_conv1d" (x @ W), "conv" (unfolded patches)
    k: int  # columns of the 2-D view
    axis: int  # K axis of the 2-D view
    stat: InputNormAccumulator | HessianAccumulator | None = None
    calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def view(self, w: torch.Tensor) -> torch.Tensor:
        if self.kind == "conv":
            return w.permute(0, *range(2, w.dim()), 1).reshape(w.shape[0], -1)
        return w

    def unview(self, v: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        if self.kind == "conv":
            o, c, *ks = shape
            return v.reshape(o, *ks, c).permute(0, len(ks) + 1, *range(1, len(ks) + 1)).contiguous()
        return v

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        m = self.entry.module
        if self.kind in ("linear", "hf_conv1d"):
            return x.reshape(-1, x.shape[-1])
        conv = m
        assert isinstance(conv, (nn.Conv1d, nn.Conv2d))
        if isinstance(conv, nn.Conv1d):
            x = x.unsqueeze(-2)
            kernel, dil, pad, stride = (
                (1, *conv.kernel_size),
                (1, *conv.dilation),
                (0, *conv.padding),
                (1, *conv.stride),
            )  # type: ignore[misc]
        else:
            kernel, dil, pad, stride = conv.kernel_size, conv.dilation, conv.padding, conv.stride  # type: ignore[assignment]
        if x.dim() == 3:  # unbatched
            x = x.unsqueeze(0)
        cols = F.unfold(x, kernel, dilation=dil, padding=pad, stride=stride)  # [B, C*P, L]
        c = conv.in_channels
        p = cols.shape[1] // c
        # (c, pos) -> (pos, c): channels innermost, matching view()
        return cols.reshape(cols.shape[0], c, p, cols.shape[2]).permute(0, 3, 2, 1).reshape(-1, p * c)

    def expected_features(self) -> int:
        if self.kind == "conv":
            return int(self.entry.param.shape[1])  # [O, C, *k] with groups == 1
        return int(self.entry.param.shape[self.entry.k_axis])

    def check_input(self, x: torch.Tensor) -> str | None:
        if self.kind == "conv":
            want = self.expected_features()
            ch_axis = -2 if isinstance(self.entry.module, nn.Conv1d) else -3
            if x.dim() < 2 or x.shape[ch_axis] != want:
                return f"expects {want} input channels, got an input of shape {list(x.shape)}"
            return None
        want = self.expected_features()
        if x.shape[-1] != want:
            return f"expects {want} input features (last dim), got an input of shape {list(x.shape)}"
        return None


def layer_for(entry: SiteEntry) -> tuple[Layer | None, str]:
    m, w = entry.module, entry.param
    if isinstance(m, nn.Linear):
        return Layer(entry, "linear", w.shape[1], 1), ""
    if _is_hf_conv1d(m):
        return Layer(entry, "hf_conv1d", w.shape[0], 0), ""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.groups != 1:
            return None, f"grouped convolution (groups={m.groups}) is not supported for calibration"
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            return None, f"convolution padding {m.padding!r}/{m.padding_mode!r} is not supported for calibration"
        return Layer(entry, "conv", w[0].numel(), 1), ""
    return (
        None,
        f"{type(m).__name__} is not supported for calibration (Linear, transformers Conv1D, Conv1d, Conv2d are)",
    )


def materialize(calibration: Iterable[Any] | None, max_batches: int | None) -> list[Any]:
    if calibration is None:
        raise InputError("calibration data is required for Wanda and SparseGPT (give an iterable of batches)")
    if isinstance(calibration, (torch.Tensor, Mapping)):
        raise InputError(
            f"calibration must be an iterable of batches (e.g. a list of tensors or a DataLoader), got one "
            f"{type(calibration).__name__}; wrap a single batch in a list"
        )
    batches: list[Any] = []
    for i, b in enumerate(calibration):
        if max_batches is not None and i >= max_batches:
            break
        if batches:
            _check_like_first(batches[0], b, i)
        batches.append(b)
    if not batches:
        raise InputError("calibration data is empty: give at least one batch")
    return batches
