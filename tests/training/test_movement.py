"""Movement / soft-movement / L0 pruning: STE gradients, masks per granularity, score LR, freezing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from graphprune.config import SemiStructured
from graphprune.errors import ConfigError
from graphprune.sparsity.metrics import check_nm
from graphprune.training.movement import Groups, MovementPruner, hard_concrete_params
from graphprune.training.schedules import Cubic


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def loss_of(model: nn.Module, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 16, generator=g), torch.randn(8, 8, generator=g)
    return (model(x) - y).square().mean()


def test_straight_through_gradients_reach_scores() -> None:
    model = make_model()
    pruner = MovementPruner(model, method="hard", sparsity=0.5)
    loss_of(model).backward()
    for fqn, pm in pruner.masks.items():
        g = pm.scores.grad
        assert g is not None and g.abs().sum() > 0, fqn
        # STE: dL/dS = dL/dW' * W, including for pruned entries (that is what lets them come back)
        module = model[0] if fqn == "0.weight" else model[2]
        w = module.parametrizations.weight.original
        mask = pruner.current_masks()[fqn]
        assert (g[~mask] != 0).any()
        # reference gradient of the loss w.r.t. the effective weight, times W
        w_eff = (w * mask).detach().requires_grad_(True)
        ref_model = make_model()
        with torch.no_grad():
            ref_model[0].weight.copy_(model[0].weight)
            ref_model[2].weight.copy_(model[2].weight)
        target = ref_model[0] if fqn == "0.weight" else ref_model[2]
        del target.weight
        target.weight = w_eff
        loss_of(ref_model).backward()
        torch.testing.assert_close(g, w_eff.grad * w, rtol=1e-5, atol=1e-7)


def test_hard_topv_follows_schedule_and_freezes_into_plan() -> None:
    model = make_model()
    pruner = MovementPruner(model, method="hard", sparsity=Cubic(final=0.75, start_step=0, end_step=10))
    opt = torch.optim.Adam(pruner.param_groups(lr=1e-3, score_lr=1e-2))
    for step in range(12):
        pruner.step(step)
        opt.zero_grad()
        loss_of(model, step).backward()
        opt.step()
    assert pruner.current == 0.75
    assert pruner.sparsity() == pytest.approx(0.75, abs=1e-3)
    plan = pruner.to_plan()
    x = torch.randn(5, 16)
    before = model(x)
    plan.check(model)  # a parametrized weight is found under its plain name
    fresh = make_model()
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "scores" not in k}, strict=False)
    with torch.no_grad():
        fresh[0].weight.copy_(model[0].parametrizations.weight.original)
        fresh[2].weight.copy_(model[2].parametrizations.weight.original)
    plan.apply(fresh)
    torch.testing.assert_close(fresh(x), before)
    pruner.remove()
    assert isinstance(model[0].weight, nn.Parameter)
    torch.testing.assert_close(model(x), before)
    for fqn, site in plan.sites.items():
        w = dict(model.named_parameters())[fqn]
        assert torch.count_nonzero(w[~site.mask]) == 0


def test_scores_have_their_own_learning_rate() -> None:
    model = make_model()
    pruner = MovementPruner(model, method="hard", sparsity=0.5)
    groups = pruner.param_groups(lr=0.0, score_lr=0.1)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in pruner.score_parameters()}
    assert not {id(p) for p in groups[0]["params"]} & {id(p) for p in groups[1]["params"]}
    opt = torch.optim.SGD(groups)
    w0 = model[0].parametrizations.weight.original.detach().clone()
    s0 = pruner.masks["0.weight"].scores.detach().clone()
    loss_of(model).backward()
    opt.step()
    assert torch.equal(model[0].parametrizations.weight.original, w0)  # lr 0 for weights
    assert not torch.equal(pruner.masks["0.weight"].scores, s0)


def test_learned_nm_masks_are_exact() -> None:
    model = make_model()
    pruner = MovementPruner(model, method="hard", granularity=SemiStructured(n=2, m=4))
    opt = torch.optim.SGD(pruner.score_parameters(), lr=1.0)
    for step in range(3):
        opt.zero_grad()
        loss_of(model, step).backward()
        opt.step()
    for fqn, mask in pruner.current_masks().items():
        assert check_nm(mask, 2, 4, axis=1).ok, fqn
        assert mask.float().mean() == 0.5


def test_structured_groups_with_shared_scores() -> None:
    model = make_model()
    # prune hidden neurons: rows of layer 0 and the matching columns of layer 2 share one score each
    pruner = MovementPruner(
        model,
        method="hard",
        granularity=Groups(axis="out", size=1),
        sparsity=0.25,
        allowed_layer_names=["0"],
    )
    assert pruner.masks["0.weight"].scores.shape == (32,)
    m = pruner.current_masks()["0.weight"]
    rows_kept = m.all(1)
    assert int(rows_kept.sum()) == 24 and bool((m.any(1) == rows_kept).all())  # whole rows
    model2 = make_model()
    heads = MovementPruner(
        model2,
        method="hard",
        granularity=Groups(axis="in", size=8),
        sparsity=0.5,
        allowed_layer_names=["2"],
    )
    cols = heads.current_masks()["2.weight"].all(0).reshape(4, 8)
    assert bool((cols.all(1) | ~cols.any(1)).all())  # head-sized column groups go together
    model3 = make_model()
    with pytest.raises(ConfigError, match="share key"):
        MovementPruner(model3, granularity=Groups(axis="out"), share={"0.weight": "h", "2.weight": "h"})


def test_soft_movement_penalty_and_threshold() -> None:
    model = make_model()
    pruner = MovementPruner(model, method="soft", tau=0.5, lam=1.0, score_init=1.0)
    assert pruner.sparsity() == 0.0  # sigma(1) > 0.5: everything kept at first
    reg = pruner.regularization()
    assert float(reg) == pytest.approx(1 / (1 + math.exp(-1.0)), rel=1e-6)
    opt = torch.optim.SGD(pruner.score_parameters(), lr=1e4)  # the penalty is a mean over 768 scores
    for _ in range(5):
        opt.zero_grad()
        pruner.regularization().backward()  # only the penalty: scores are pushed below the threshold
        opt.step()
    assert pruner.sparsity() == 1.0
    with pytest.raises(ConfigError, match="through lam"):
        MovementPruner(make_model(), method="soft", sparsity=0.5)


def test_l0_hard_concrete() -> None:
    left, r, beta = hard_concrete_params()
    assert (left, r, beta) == (-0.1, 1.1, pytest.approx(2 / 3))
    model = make_model()
    pruner = MovementPruner(model, method="l0", lam=1.0)
    pm = pruner.masks["0.weight"]
    torch.manual_seed(0)
    z = pm.l0_gate(deterministic=False)
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    assert bool((z == 1.0).any())  # the stretch past 1 makes exact ones possible
    expected = torch.sigmoid(pm.scores - beta * math.log(-left / r)).mean()
    total = sum(p.numel() for p in pruner.score_parameters())
    assert total == 16 * 32 + 32 * 8
    reg = pruner.regularization()
    reg.backward()
    assert pm.scores.grad is not None and pm.scores.grad.abs().sum() > 0
    assert float(reg) == pytest.approx(float(expected), rel=1e-5)  # all scores equal at init
    with torch.no_grad():
        pm.scores[:4] = -10.0  # gates closed
    model.eval()
    plan = pruner.to_plan()
    assert not plan.sites["0.weight"].mask[:4].any()
    assert plan.sites["0.weight"].values is not None
    loss_of(model).backward()  # eval path is differentiable too


def test_bad_movement_configs() -> None:
    with pytest.raises(ConfigError, match="MovementPruner.method must be"):
        MovementPruner(make_model(), method="topk")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs method='hard'"):
        MovementPruner(make_model(), method="l0", granularity=SemiStructured())
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
        MovementPruner(make_model(), sparsity=1.0)
