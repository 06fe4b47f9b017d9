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


class Opaque(nn.Module):
    """Untraceable (data-dependent Python control flow) and without any whitelisted layer."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        if float(x.sum()) > 1e9:
            return x
        return torch.einsum("ij,bj->bi", self.w, x)


def opaque_model():
    return Opaque(), (torch.randn(2, 8),)


def wrong_inputs():
    torch.manual_seed(0)
    return nn.Linear(8, 4), (torch.randn(2, 5),)


def calib_net():
    """A two-block MLP (tests/passes/test_calibrate.py's) and one example batch: for --calib / --eval / --plan."""
    from tests.passes.test_calibrate import EXAMPLE, build

    return build(), EXAMPLE


def calib_batches():
    from tests.passes.test_calibrate import batches

    return batches(6)


def eval_batches():
    from tests.passes.test_calibrate import batches

    return batches(3, seed=9)


def calib_wrong_shape():
    """Calibration batches whose input has 5 features where calib_net takes 32."""
    return [(torch.randn(8, 5),) for _ in range(3)]


def calib_non_finite():
    return [(torch.full((8, 32), float("nan")),) for _ in range(3)]


def named_net():
    """calib_net's MLP with a forward that takes its input by name and an optional scale (dict example inputs)."""
    from tests.passes.test_calibrate import EXAMPLE, build

    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = build()

        def forward(self, x, scale=None):
            y = self.net(x)
            return y if scale is None else y * scale

    return Named().eval(), {"x": EXAMPLE[0]}


def named_batches():
    from tests.passes.test_calibrate import batches

    return [{"x": b[0]} for b in batches(6)]


def named_eval():
    from tests.passes.test_calibrate import batches

    return [{"x": b[0]} for b in batches(3, seed=9)]


def named_wrong_key():
    return [{"y": torch.randn(8, 32)} for _ in range(3)]
