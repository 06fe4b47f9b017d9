"""Factories that misbehave, used as ``tests.hostile:NAME`` by the trust tests (issue 9).

Each returns ``(model, example_inputs)`` of a small model that is broken in one way, or fails
while being built or imported.
"""

import sys

import torch
from torch import nn


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def nan_bias():
    m = _mlp()
    with torch.no_grad():
        m[2].bias[3] = float("nan")
    return m, (torch.randn(4, 16),)


def inf_weight():
    m = _mlp()
    with torch.no_grad():
        m[0].weight[0, 0] = float("inf")
    return m, (torch.randn(4, 16),)


def overflow():
    """Finite weights of 3e38: the first Linear's output overflows float32 to Inf."""
    m = _mlp()
    with torch.no_grad():
        m[0].weight.fill_(3e38)
    return m, (torch.ones(4, 16),)


def bf16():
    return _mlp().to(torch.bfloat16), (torch.randn(4, 16, dtype=torch.bfloat16),)


class _Complex(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return torch.complex(self.fc(x), self.fc(x))


def complex_output():
    torch.manual_seed(0)
    return _Complex().eval(), (torch.randn(4, 16),)


class _Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        return float(self.fc(x).sum())


def float_output():
    torch.manual_seed(0)
    return _Scalar().eval(), (torch.randn(4, 16),)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x):
        h = self.fc1(x)
        if h.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
            h = h.relu()
        return self.fc2(h)


def data_dependent_if():
    torch.manual_seed(0)
    return _DataDependent().eval(), (torch.randn(4, 16),)


def zero_size_weight():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(0, 8), nn.ReLU(), nn.Linear(8, 8)).eval(), (torch.randn(4, 0),)


def raises():
    raise RuntimeError("the factory's own bug")


def exits():
    sys.exit(0)


def slow():
    """Sleeps long enough for a test to send SIGTERM while the output folder is staged."""
    import time

    time.sleep(60)
    return _mlp(), (torch.randn(4, 16),)
