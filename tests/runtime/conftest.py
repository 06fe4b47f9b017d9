"""Small seeded models and ONNX builders shared by the runtime tests.

Exports are slow-ish (~1 s each with the dynamo exporter), so each model is exported once per session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn


class MLP(nn.Module):
    """Linear MLP; a dict + tuple output to exercise pytree flattening."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        h = torch.relu(self.fc1(x))
        return {"logits": self.fc2(h), "aux": (h.sum(-1),)}


class ConvBN(nn.Module):
    """Conv + BN (folded by the exporter in eval mode) + grouped conv + depthwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.gconv = nn.Conv2d(16, 32, 3, padding=1, groups=4)  # weight [32, 4, 3, 3]: K = 4 per group
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)  # K = 1: never N:M-divisible

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(torch.relu(self.gconv(torch.relu(self.bn(self.conv(x))))))


class GPT2Like(nn.Module):
    """HF GPT-2 style Conv1D: weight stored [in, out], applied with addmm; plus a Linear on rank-3 input."""

    def __init__(self) -> None:
        super().__init__()
        self.c_attn_weight = nn.Parameter(torch.randn(16, 24) * 0.2)
        self.c_attn_bias = nn.Parameter(torch.randn(24) * 0.1)
        self.proj = nn.Linear(24, 12)  # on a rank-3 input: exported as MatMul with a transposed copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], 24)
        h = torch.addmm(self.c_attn_bias, x.reshape(-1, 16), self.c_attn_weight).reshape(shape)
        return self.proj(torch.nn.functional.gelu(h))


def _seeded(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    m = cls()
    if isinstance(m, ConvBN):
        with torch.no_grad():
            m.bn.running_mean.uniform_(-0.5, 0.5)
            m.bn.running_var.uniform_(0.5, 2.0)
            m.bn.weight.uniform_(0.5, 1.5)
            m.bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


MODELS: dict[str, tuple[type[nn.Module], Callable[[], tuple[torch.Tensor, ...]]]] = {
    "mlp": (MLP, lambda: (torch.randn(4, 16),)),
    "convbn": (ConvBN, lambda: (torch.randn(1, 8, 8, 8),)),
    "gpt2like": (GPT2Like, lambda: (torch.randn(2, 5, 16),)),
}


def build(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    cls, inputs = MODELS[name]
    model = _seeded(cls)
    torch.manual_seed(1)
    return model, inputs()


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """``exported(name) -> (model, inputs, path, record)``, exported once per session (do not modify the file)."""
    from graphprune.runtime.export import export_onnx

    cache: dict[str, tuple] = {}
    root = tmp_path_factory.mktemp("exported")

    def get(name: str):
        if name not in cache:
            model, inputs = build(name)
            path = root / f"{name}.onnx"
            record = export_onnx(model, inputs, path)
            cache[name] = (model, inputs, path, record)
        return cache[name]

    return get


# ---- hand-built ONNX graphs --------------------------------------------------------------------
def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, Sequence[int | str]]],
    outputs: Sequence[tuple[str, Sequence[int | str]]],
    initializers: dict[str, np.ndarray],
    *,
    opset: int = 17,
    check: bool = True,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs],
        [numpy_helper.from_array(a, name=k) for k, a in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, path)
    return path


def nm_along(shape: tuple[int, ...], axis: int, seed: int = 0) -> np.ndarray:
    """A random tensor that is 2:4 along ``axis`` (positions 0, 1 of every 4 kept) and dense elsewhere,
    so it violates 2:4 along every other axis of size >= 4."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    w = np.moveaxis(w, axis, -1).copy()  # K last
    w[..., 2::4] = 0.0
    w[..., 3::4] = 0.0  # keeps positions 0,1 of every group of 4 along K
    return np.moveaxis(w, -1, axis).copy()


def file_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()
