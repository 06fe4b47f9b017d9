"""Site discovery: every weight-bearing op is found, with the right reduction axis K, on each capture method."""

import pytest
import torch
from torch import nn

from graphprune.analysis.decide import decide
from graphprune.analysis.find_sites import find_sites
from graphprune.capture import capture
from graphprune.config import CompileConfig, SemiStructured
from graphprune.errors import UnsupportedModelError
from graphprune.report import SkipReason


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.conv = nn.Conv2d(3, 8, 3)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.right = nn.Parameter(torch.randn(16, 4))  # x @ right: K = axis 0
        self.left_t = nn.Parameter(torch.randn(4, 16))  # addmm(b, x, left_t.t()): K = axis 1
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.emb = nn.Embedding(10, 8)

    def forward(self, x, img):
        y = self.fc(x)
        a, _ = self.mha(x, x, x)
        c = self.dw(self.conv(img))
        z = torch.addmm(torch.zeros(4), y[0], self.left_t.t())
        return y @ self.right, a, self.up(c), z, self.emb(torch.tensor([1]))


def _inputs():
    torch.manual_seed(0)
    return (torch.randn(2, 5, 8), torch.randn(1, 3, 10, 10))


EXPECTED = {
    "fc.weight": ("linear", 1),
    "conv.weight": ("conv2d", 1),
    "dw.weight": ("conv2d", 1),
    "mha.in_proj_weight": ("mha_in_proj", 1),
    "mha.out_proj.weight": ("linear", 1),
    "right": ("matmul", 0),
    "left_t": ("matmul", 1),
    "up.weight": ("conv_transpose2d", 0),
}


@pytest.mark.parametrize("method", ["export", "fx"])
def test_graph_captures_find_every_site_with_its_k_axis(method):
    torch.manual_seed(0)
    cap = capture(Mixed().eval(), _inputs(), methods=(method,))
    scan = find_sites(cap)
    got = {s.param: (s.op, s.k_axis) for s in scan.sites}
    assert got == EXPECTED
    assert [u[0] for u in scan.unsupported] == ["emb.weight"]
    flops = {s.param: s.flops for s in scan.sites}
    # Linear 8->16 on 2x5 tokens: 2 * (2*5*16) * 8 MACs
    assert flops["fc.weight"] == 2 * 2 * 5 * 16 * 8
    # conv 3->8, 3x3 on 10x10 -> 8x8x8 outputs, 27 MACs each
    assert flops["conv.weight"] == 2 * 8 * 8 * 8 * 27
    dw = next(s for s in scan.sites if s.param == "dw.weight")
    assert dw.groups == 8


def test_walk_finds_module_weights_only():
    cap = capture(Mixed().eval(), _inputs(), methods=("walk",))
    scan = find_sites(cap)
    got = {s.param: (s.op, s.k_axis) for s in scan.sites}
    assert got == {k: v for k, v in EXPECTED.items() if k not in ("right", "left_t")}
    assert {u[0] for u in scan.unsupported} == {"right", "left_t", "emb.weight"}


def test_capture_falls_back_and_records_why():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum().item() > 1e9:  # data-dependent control flow defeats both graph captures
                return x
            return self.fc(x)

    cap = capture(Untraceable().eval(), (torch.randn(2, 4),))
    assert cap.method == "walk"
    assert [t["method"] for t in cap.tried] == ["export", "fx", "walk"]
    assert all(t["error"] for t in cap.tried[:2])


def test_capture_fails_clearly_when_nothing_works():
    with pytest.raises(UnsupportedModelError, match="no capture method"):
        capture(nn.Linear(2, 2), (torch.randn(1, 2),), methods=("export",)) if False else capture(
            _Broken(), (torch.randn(1, 2),), methods=("export", "fx")
        )


class _Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_tied_weights_and_k_not_divisible_get_reasons():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(32, 16)
            self.odd = nn.Linear(16, 30)
            self.head = nn.Linear(30, 32, bias=False)
            self.out = nn.Linear(16, 32, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, ids):
            h = self.emb(ids)
            return self.head(self.odd(h)), self.out(h)

    model = Tied().eval()
    cap = capture(model, (torch.randint(0, 32, (2, 5)),))
    scan = find_sites(cap)
    decisions = {s.param: decide(s, CompileConfig(pattern=(SemiStructured(),)))[0] for s in scan.sites}
    assert decisions["odd.weight"].pruned
    assert decisions["head.weight"].reason == SkipReason.K_NOT_DIVISIBLE
    assert "K=30" in decisions["head.weight"].message
    tied = decisions["emb.weight"]
    assert tied.reason == SkipReason.TIED_WEIGHT and "prune_tied" in tied.message
    cfg = CompileConfig(exclude=("odd",), op_types=("linear",))
    assert decide(next(s for s in scan.sites if s.param == "odd.weight"), cfg)[0].reason == SkipReason.EXCLUDED_BY_FILTER


def test_source_line_points_at_user_code():
    cap = capture(Mixed().eval(), _inputs(), methods=("export",))
    site = next(s for s in find_sites(cap).sites if s.param == "right")
    assert site.source is not None and "test_find_sites.py" in site.source
