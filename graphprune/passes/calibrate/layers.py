"""How a prunable layer looks to the calibrated maths: a 2-D weight view and its inputs as rows ``[T, K]``.

The maths in ``graphprune.sparsity.calibrated`` takes 2-D weights. Linear ``[out, in]``
and transformers Conv1D ``[in, out]`` are used as they are (K on axis 1 / 0); a Conv1d/Conv2d
(groups=1, zero padding) is the linear map ``[O, kh·kw·C]`` on unfolded patches, channels innermost,
so N:M groups stay M consecutive input channels of one kernel position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from graphprune.analysis.module_sites import SiteEntry, _is_hf_conv1d
from graphprune.sparsity.calibrated import HessianAccumulator, InputNormAccumulator

__all__ = ["Layer", "layer_for"]


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
            )
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
