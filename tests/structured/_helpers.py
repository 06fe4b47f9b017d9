"""Shared helpers for the structured-pruning tests: tiny models and the ONNX parity check."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphprune.runtime.compare import ParityStats, compare_outputs
from graphprune.structured import StructuredResult, prune_structured


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_copy(model: nn.Module, inputs: tuple[Any, ...], patterns: Any, **kw: Any) -> tuple[nn.Module, nn.Module, StructuredResult]:
    """(original, shrunk, result): prunes a deep copy so the original stays dense."""
    original = copy.deepcopy(model)
    result = prune_structured(model, inputs, patterns, **kw)
    return original, model, result


def torch_parity(shrunk: nn.Module, masked: nn.Module, inputs: tuple[Any, ...]) -> ParityStats:
    with torch.no_grad():
        return compare_outputs(masked(*inputs), shrunk(*inputs))


def onnx_parity(shrunk: nn.Module, masked: nn.Module, inputs: tuple[Any, ...], tmp_path: Path) -> ParityStats:
    """Export the shrunk model to ONNX and compare onnxruntime's outputs with the masked dense model."""
    from graphprune.runtime.export import export_onnx
    from graphprune.runtime.ort import check_parity

    path = tmp_path / "shrunk.onnx"
    export_onnx(shrunk, inputs, path)
    return check_parity(masked, inputs, path)


class ConcatNet(nn.Module):
    """Two conv branches concatenated, BN over the concat, a 1x1 conv, flatten -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.mix = nn.Conv2d(32, 16, 1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        y = torch.relu(self.mix(y))
        return self.fc(torch.flatten(y, 1))


def concat_net() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = ConcatNet().eval()
    with torch.no_grad():
        model.bn.running_mean.normal_(0, 0.1)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model, (torch.randn(2, 3, 4, 4),)


class GroupedNet(nn.Module):
    """conv -> grouped conv (unsliceable) -> conv; and a separate prunable conv pair."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.g(torch.relu(self.c1(x))))
        return self.c3(torch.relu(self.c2(y)))


def grouped_net() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return GroupedNet().eval(), (torch.randn(1, 3, 8, 8),)


class HardcodedHeads(nn.Module):
    """Attention whose forward hard-codes 4 heads: capture folds it, pruning heads cannot work."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.num_heads = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q(x).view(b, s, 4, 16).transpose(1, 2)
        k = self.k(x).view(b, s, 4, 16).transpose(1, 2)
        v = self.v(x).view(b, s, 4, 16).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
        return self.o(a.transpose(1, 2).reshape(b, s, 64))


class ThreeLayerMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def lopsided_mlp() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """fc1's units all score the same; half of fc2's are tiny: a global ranking at 75% empties fc1."""
    model = ThreeLayerMLP().eval()
    with torch.no_grad():
        model.fc1.weight.fill_(1.0)
        model.fc1.bias.zero_()
        scale = torch.tensor([1e-3] * 4 + [1.0] * 4).unsqueeze(1)
        model.fc2.weight.copy_(scale.expand(8, 8))
        model.fc2.bias.zero_()
        model.fc3.weight.fill_(1.0)
        model.fc3.bias.zero_()
    return model, (torch.randn(2, 8),)
