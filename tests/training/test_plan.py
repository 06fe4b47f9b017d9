"""Plan: JSON + safetensors round trip, apply (folded / masked), torch.nn.utils.prune import, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from graphprune.errors import InputError
from graphprune.plan import Plan, PlanSite
from graphprune.training.asp import ASP


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = make_model()
    asp = ASP(model, allow_permutation=True, permutation_time_budget_s=0.1)
    asp.compute_sparse_masks()
    plan = asp.to_plan()
    plan.sites["2.weight"].values = model[2].weight.detach().clone()
    plan.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert meta["format"] == "graphprune.plan" and [s["param"] for s in meta["sites"]] == ["0.weight", "2.weight"]
    back = Plan.load(tmp_path / "p")
    for name, site in plan.sites.items():
        other = back.sites[name]
        assert torch.equal(other.mask, site.mask) and other.mask.dtype == torch.bool
        assert other.k_axis == site.k_axis and other.pattern == site.pattern
        assert torch.equal(other.perm, site.perm)  # type: ignore[arg-type]
    assert torch.equal(back.sites["2.weight"].values, plan.sites["2.weight"].values)  # type: ignore[arg-type]
    assert back.sparsity() == pytest.approx(0.5)


@pytest.mark.parametrize("form", ["folded", "masked"])
def test_apply(form: str) -> None:
    src = make_model()
    asp = ASP(src)
    asp.compute_sparse_masks()
    plan = asp.to_plan()
    dst = make_model()
    plan.apply(dst, form=form)  # type: ignore[arg-type]
    x = torch.randn(3, 8)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    if form == "masked":
        assert hasattr(dst[0], "weight_orig") and hasattr(dst[0], "weight_mask")
        # reading it back as a plan gives the same masks
        again = Plan.from_torch_prune(dst)
        assert all(torch.equal(again.sites[k].mask, plan.sites[k].mask) for k in plan.sites)


def test_torch_nn_utils_prune_model_and_state_dict_as_plan() -> None:
    model = make_model()
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    prune.random_unstructured(model[2], "weight", amount=0.25)
    plan = Plan.from_torch_prune(model)
    assert set(plan.sites) == {"0.weight", "2.weight"}
    assert torch.equal(plan.sites["0.weight"].mask, model[0].weight_mask.bool())
    assert plan.sites["0.weight"].sparsity == pytest.approx(0.5)
    from_sd = Plan.from_torch_prune(model.state_dict())
    assert torch.equal(from_sd.sites["2.weight"].mask, plan.sites["2.weight"].mask)
    fresh = make_model()
    plan.apply(fresh)
    assert torch.equal(fresh[0].weight == 0, ~plan.sites["0.weight"].mask)
    with pytest.raises(InputError, match="found no torch.nn.utils.prune masks"):
        Plan.from_torch_prune(make_model())


def test_plan_for_layers_the_model_lacks(tmp_path: Path) -> None:
    plan = Plan()
    plan.add(PlanSite(param="encoder.9.weight", mask=torch.ones(4, 8, dtype=torch.bool)))
    with pytest.raises(
        InputError, match=r"masks for 1 weight\(s\) the model lacks: encoder\.9\.weight.*layers are: 0, 2"
    ):
        plan.apply(make_model())
    bad_shape = Plan()
    bad_shape.add(PlanSite(param="0.weight", mask=torch.ones(4, 4, dtype=torch.bool)))
    with pytest.raises(InputError, match=r"do not match.*0\.weight \(plan \(4, 4\), model \(16, 8\)\)"):
        bad_shape.apply(make_model())
    with pytest.raises(InputError, match="has no plan.json"):
        Plan.load(tmp_path)
