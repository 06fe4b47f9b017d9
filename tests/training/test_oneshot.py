"""prune_oneshot: the layer-by-layer calibration driver on small models (the maths: tests/sparsity/test_sparsity_calibrated.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphprune.config import SemiStructured
from graphprune.errors import ConfigError, InputError
from graphprune.sparsity.calibrated import wanda_mask
from graphprune.sparsity.metrics import check_nm
from graphprune.training.oneshot import block_of, prune_oneshot


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 128)) for _ in range(2)]
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)[:, :128]
        for b in self.blocks:
            h = h + b(h)
        return self.head(h)


def calib(n: int = 6, seed: int = 0, batch: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 4, 4, 4, generator=g) for _ in range(n)]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_driver_prunes_every_layer_2_4(method: str) -> None:
    torch.manual_seed(0)
    model = Small()
    dense = Small()
    dense.load_state_dict(model.state_dict())
    plan = prune_oneshot(model, calib(), method=method, pattern=SemiStructured())  # type: ignore[arg-type]
    assert list(plan.sites) == [
        "conv.weight",
        "blocks.0.0.weight",
        "blocks.0.2.weight",
        "blocks.1.0.weight",
        "blocks.1.2.weight",
        "head.weight",
    ]
    params = dict(model.named_parameters())
    for fqn, site in plan.sites.items():
        assert check_nm(params[fqn], 2, 4, axis=1).ok, fqn
        assert check_nm(site.mask, 2, 4, axis=1).ok
        assert site.mask.float().mean() == 0.5
        assert (site.values is not None) == (method == "sparsegpt")
    # the plan reproduces the pruned model from the dense one
    plan.apply(dense)
    x = calib(1, seed=5)[0]
    torch.testing.assert_close(dense(x), model(x))


@torch.no_grad()
def test_driver_sparsegpt_reduces_output_error_vs_magnitude() -> None:
    torch.manual_seed(0)
    base = Small()
    x = calib(1, seed=9, batch=64)[0]  # held out from the calibration batches
    ref = base(x).detach()
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = Small()
        model.load_state_dict(base.state_dict())
        prune_oneshot(model, calib(16, batch=16), method=method, pattern=SemiStructured())  # type: ignore[arg-type]
        errors[method] = float((model(x) - ref).norm() / ref.norm())
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_driver_groups_blocks_and_skips() -> None:
    assert block_of("encoder.layer.3.attention.self.query") == "encoder.layer.3"
    assert block_of("head") == "head"
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8))
    plan = prune_oneshot(model, [torch.randn(2, 6)], method="wanda", pattern=SemiStructured())
    assert list(plan.sites) == ["1.weight"]
    assert plan.skipped[0]["param"] == "0.weight" and plan.skipped[0]["reason"] == "k_not_divisible"
    with pytest.raises(ConfigError, match="group_by must be one of"):
        prune_oneshot(model, [torch.randn(2, 6)], method="wanda", group_by="blocks")  # type: ignore[arg-type]
    torch.manual_seed(0)
    ref = Small()
    results = {}
    for grouping in ("block", "parent", "layer"):
        m = Small()
        m.load_state_dict(ref.state_dict())
        results[grouping] = prune_oneshot(m, calib(4), method="sparsegpt", group_by=grouping)  # type: ignore[arg-type]
    # the first layer sees the dense inputs whatever the grouping; later ones differ once earlier groups are pruned
    assert torch.equal(results["block"].sites["conv.weight"].mask, results["layer"].sites["conv.weight"].mask)
    assert all(set(r.sites) == set(results["block"].sites) for r in results.values())
    grouped = nn.Sequential(nn.Conv2d(8, 8, 1, groups=2), nn.Flatten(), nn.Linear(8 * 16, 4))
    plan = prune_oneshot(grouped, [torch.randn(2, 8, 4, 4)], method="sparsegpt", allowed_layer_names=["0", "2"])
    assert list(plan.sites) == ["2.weight"]
    assert plan.skipped[0]["reason"] == "unsupported_op" and "groups=2" in plan.skipped[0]["message"]


def test_driver_permutation_records_perm_and_keeps_more() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16))
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([3.0, 3.0, 0.1, 0.1] * 8))
    w = model[0].weight.detach().clone()
    batches = [torch.randn(16, 32)]
    plan = prune_oneshot(model, batches, method="wanda", permutation=True, permutation_time_budget_s=0.5)
    site = plan.sites["0.weight"]
    assert site.perm is not None
    assert check_nm(site.mask.index_select(1, site.perm), 2, 4, axis=1).ok
    plain = wanda_mask(w, batches[0].norm(dim=0), SemiStructured(), axis=1)
    score = w.abs() * batches[0].norm(dim=0)
    assert float((score * site.mask).sum()) >= float((score * plain).sum())


# ---- bad calibration data -------------------------------------------------------------------------


def test_calibration_of_the_wrong_shape_names_the_input() -> None:
    model = nn.Sequential(nn.Linear(16, 8))
    with pytest.raises(
        InputError, match=r"calibration batch 0 \(input: float32\[4, 12\]\).*layer '0'.*expects 16 input features"
    ):
        prune_oneshot(model, [torch.randn(4, 12)], method="sparsegpt", sequential=False)
    with pytest.raises(
        InputError, match=r"calibration batch 1: input 'input' is float32\[4\], in the first batch it is float32\[4, 16\] \(wrong shape\)"
    ):
        prune_oneshot(model, [torch.randn(4, 16), torch.randn(4)], method="wanda")
    with pytest.raises(
        InputError,
        match=r"calibration batch 1 has inputs \(x: float32\[2, 16\], y: .*\) but the first batch had \(x: float32\[2, 16\]\)",
    ):
        prune_oneshot(
            model, [{"x": torch.randn(2, 16)}, {"x": torch.randn(2, 16), "y": torch.randn(2)}], method="wanda"
        )
    with pytest.raises(InputError, match="calibration data is empty"):
        prune_oneshot(model, [], method="wanda")
    with pytest.raises(InputError, match="iterable of batches"):
        prune_oneshot(model, torch.randn(4, 16), method="wanda")
    conv = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(
        InputError, match=r"calibration batch 0 \(input: float32\[1, 4, 8, 8\]\) failed in the model's forward"
    ):
        prune_oneshot(conv, [torch.randn(1, 4, 8, 8)], method="wanda")


def test_driver_on_conv1d_and_hf_conv1d() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(8, 16, 3, padding=1), nn.Flatten(1), transformers.pytorch_utils.Conv1D(8, 16 * 6))
    batches = [torch.randn(4, 8, 6) for _ in range(4)]
    plan = prune_oneshot(model, batches, method="sparsegpt")
    assert plan.sites["0.weight"].extra["calibration_rows"] == 4 * 4 * 6  # one row per output position
    assert plan.sites["2.weight"].k_axis == 0
    assert check_nm(model[0].weight, 2, 4, axis=1).ok and check_nm(model[2].weight, 2, 4, axis=0).ok
