"""Factories used by tests as ``tests.factories:NAME`` (package.module:callable inputs)."""

import torch
from torch import nn


def tiny_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    return model, (torch.randn(4, 16),)


def returns_int():
    return 3


class NanLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        with torch.no_grad():
            self.fc.weight[0, 0] = float("nan")

    def forward(self, x):
        return self.fc(x)


def nan_model():
    return NanLinear(), (torch.randn(2, 8),)
