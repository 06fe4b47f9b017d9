"""ASP-compatible API: masks as buffers, optimizer hooks keep zeros, order and input errors."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from graphprune.config import SemiStructured, Unstructured
from graphprune.errors import ConfigError, InputError
from graphprune.sparsity.metrics import check_nm
from graphprune.training import asp as asp_mod
from graphprune.training.asp import (
    ASP,
    MASK_SUFFIX,
    PruningOrderError,
    compute_sparse_masks,
    find_prunable_sites,
    init_model_for_pruning,
    init_optimizer_for_pruning,
    prune_trained_model,
    restore_pruned_weights,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 6)  # K=32 divisible; out 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


def make_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def batch(seed: int) -> torch.Tensor:
    return torch.randn(4, 8, 4, 4, generator=torch.Generator().manual_seed(seed))


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, n: int, seed: int = 0) -> None:
    for i in range(n):
        opt.zero_grad()
        model(batch(seed + i)).square().mean().backward()
        opt.step()


OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adamw_wd": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.5),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero(name: str) -> None:
    model = make_net()
    opt = OPTIMIZERS[name](model.parameters())
    train_steps(model, opt, 3)  # optimizer state (momentum, Adam moments) is non-zero everywhere
    asp = prune_trained_model(model, opt)
    masks = asp.masks()
    assert set(masks) == {"conv.weight", "fc1.weight", "fc2.weight"}
    before = {k: dict(model.named_parameters())[k].detach().clone() for k in masks}
    train_steps(model, opt, 6, seed=100)
    params = dict(model.named_parameters())
    for fqn, mask in masks.items():
        w = params[fqn]
        assert not mask.all()
        assert torch.count_nonzero(w[~mask]) == 0, fqn  # exactly zero
        assert not torch.equal(w[mask], before[fqn][mask]), f"{fqn}: kept weights should still train"
        assert check_nm(w, 2, 4, axis=1).ok


def test_masks_are_buffers_and_survive_state_dict_round_trip() -> None:
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    asp = prune_trained_model(model, opt)
    train_steps(model, opt, 2)
    sd = model.state_dict()
    assert "fc1.weight" + MASK_SUFFIX in sd and sd["fc1.weight" + MASK_SUFFIX].dtype == torch.bool
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)

    fresh = make_net(seed=1)
    asp2 = ASP(fresh)
    asp2.load_state_dict(loaded)
    for fqn, m in asp.masks().items():
        assert torch.equal(asp2.masks()[fqn], m)
    assert asp2.is_sparsity_enabled()
    from_ddp = make_net(seed=2)  # a checkpoint saved from a DDP wrapper: every key under "module."
    asp3 = ASP(from_ddp)
    asp3.load_state_dict({f"module.{k}": v for k, v in loaded.items()})
    assert all(torch.equal(asp3.masks()[k], m) for k, m in asp.masks().items())
    opt2 = torch.optim.Adam(fresh.parameters(), lr=0.01)
    asp2.init_optimizer_for_pruning(opt2)
    train_steps(fresh, opt2, 3)
    params = dict(fresh.named_parameters())
    for fqn, m in asp2.masks().items():
        assert torch.count_nonzero(params[fqn][~m]) == 0


def test_two_models_at_once_keep_their_own_masks() -> None:
    a, b = make_net(0), make_net(1)
    oa = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    ob = torch.optim.AdamW(b.parameters(), lr=0.01, weight_decay=0.1)
    asp_a = init_model_for_pruning(a, "m4n2_1d")
    asp_b = init_model_for_pruning(b, Unstructured(sparsity=0.75))
    assert init_optimizer_for_pruning(ob) is asp_b  # found by the optimizer's parameters
    assert init_optimizer_for_pruning(oa) is asp_a
    with pytest.raises(ConfigError, match="pass model="):
        compute_sparse_masks()
    compute_sparse_masks(a)
    compute_sparse_masks(b)
    train_steps(a, oa, 3)
    train_steps(b, ob, 3)
    assert check_nm(a.fc1.weight, 2, 4, axis=1).ok
    zeros_b = float((b.fc1.weight == 0).float().mean())
    assert zeros_b == pytest.approx(0.75, abs=1e-3)
    assert not check_nm(b.fc1.weight, 2, 4, axis=1).ok  # b is unstructured, not 2:4


def test_restore_pruned_weights_and_recompute() -> None:
    model = make_net()
    dense = {k: v.detach().clone() for k, v in model.named_parameters()}
    asp = ASP(model, allow_recompute_mask=True)
    asp.compute_sparse_masks()
    assert torch.count_nonzero(model.fc1.weight) == model.fc1.weight.numel() // 2
    asp.restore_pruned_weights()
    assert torch.equal(model.fc1.weight, dense["fc1.weight"])
    assert all(m.all() for m in asp.masks().values())
    asp.compute_sparse_masks("m4n2_2d_greedy")
    assert check_nm(model.fc1.weight, 2, 4, axis=1).ok
    assert check_nm(model.fc1.weight, 2, 4, axis=0).ok  # 2-D: rows and columns


def test_sites_and_k_axes_on_conv_and_hf_conv1d() -> None:
    transformers = pytest.importorskip("transformers")
    model = nn.Sequential(nn.Conv1d(4, 8, 3), transformers.pytorch_utils.Conv1D(12, 8), nn.ConvTranspose1d(8, 4, 3))
    sites = find_prunable_sites(model)
    assert [(s.name, s.k_axis) for s in sites] == [("0", 1), ("1", 0)]  # ConvTranspose not whitelisted by default
    asp = ASP(model)
    asp.compute_sparse_masks()
    assert check_nm(model[1].weight, 2, 4, axis=0).ok  # Conv1D weight is [in, out]: K = axis 0


def test_graph_sites_cover_functional_matmuls_with_their_k_axis() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.w_in = nn.Parameter(torch.randn(16, 32))  # x @ w_in: [K, N], K = axis 0
            self.bn = nn.BatchNorm1d(32)
            self.proj = nn.Linear(32, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(torch.relu(self.bn(x @ self.w_in)))

    model = Functional().train()
    x = torch.randn(4, 16)
    assert [s.fqn for s in find_prunable_sites(model)] == ["proj.weight"]  # the module walk misses w_in
    stats = model.bn.running_mean.clone()
    asp = ASP(model, example_inputs=(x,))
    assert model.training and torch.equal(model.bn.running_mean, stats)  # capture left modes and statistics alone
    assert [(s.fqn, s.entry.k_axis) for s in asp.sites] == [("w_in", 0), ("proj.weight", 1)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    asp.init_optimizer_for_pruning(opt)
    asp.compute_sparse_masks()
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    assert check_nm(model.w_in, 2, 4, axis=0).ok and not check_nm(model.w_in, 2, 4, axis=1).ok
    assert check_nm(model.proj.weight, 2, 4, axis=1).ok
    assert [s.fqn for s in ASP(Functional(), example_inputs=x, disallowed_layer_names=["w_in"]).sites] == ["proj.weight"]


def test_k_not_divisible_is_left_dense_and_reported() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4))
    asp = ASP(model)
    asp.compute_sparse_masks()
    plan = asp.to_plan()
    assert list(plan.sites) == ["1.weight"]
    assert plan.skipped[0]["param"] == "0.weight" and "not divisible" in plan.skipped[0]["message"]
    assert torch.count_nonzero(model[0].weight) == model[0].weight.numel()


def test_allowed_and_disallowed_layer_names() -> None:
    model = make_net()
    asp = ASP(model, allowed_layer_names=["fc*"], disallowed_layer_names=["fc2"])
    assert [s.fqn for s in asp.sites] == ["fc1.weight"]


def test_permutation_keeps_more_magnitude_and_records_perm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16))
    with torch.no_grad():  # columns with structure that a permutation can exploit
        model[0].weight.mul_(torch.tensor([4.0, 4.0, 0.1, 0.1] * 8))
    w = model[0].weight.detach().clone()
    plain_model = nn.Sequential(nn.Linear(32, 16))  # separate model for the unpermuted mask
    plain_model[0].weight.data.copy_(w)
    plain = ASP(plain_model)
    plain.compute_sparse_masks()
    asp = ASP(model, allow_permutation=True, permutation_time_budget_s=0.5)
    asp.compute_sparse_masks()
    site = asp.to_plan().sites["0.weight"]
    assert site.perm is not None and sorted(site.perm.tolist()) == list(range(32))
    assert check_nm(site.mask.index_select(1, site.perm), 2, 4, axis=1).ok  # N:M after the permutation
    kept = float((w.abs() * site.mask).sum())
    kept_plain = float((w.abs() * plain.masks()["0.weight"]).sum())
    assert kept >= kept_plain
    assert "0.weight_sparsity_perm" in model.state_dict()


# ---- bad input -----------------------------------------------------------------------------------


def test_whitelist_matching_nothing_lists_what_the_model_has() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(ConfigError, match=r"no layer of Sequential matches the whitelist.*Embedding×1.*LayerNorm×1"):
        ASP(model)
    with pytest.raises(ConfigError, match=r"allowed_layer_names=\['nothing\*'\].*fc1"):
        ASP(make_net(), allowed_layer_names=["nothing*"])


def test_optimizer_not_holding_the_models_parameters() -> None:
    model, other = make_net(0), make_net(1)
    asp = ASP(model)
    with pytest.raises(ConfigError, match="does not hold the model's parameters.*none.*conv.weight"):
        asp.init_optimizer_for_pruning(torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match="2 of 3.*missing: fc2.weight"):
        asp.init_optimizer_for_pruning(torch.optim.SGD([model.conv.weight, model.fc1.weight], lr=0.1))
    with pytest.raises(ConfigError, match="does not hold the parameters of any model"):
        init_optimizer_for_pruning(torch.optim.SGD(other.parameters(), lr=0.1))


def test_steps_out_of_order() -> None:
    asp_mod._INSTANCES.clear()
    with pytest.raises(PruningOrderError, match="before init_model_for_pruning"):
        compute_sparse_masks()
    model = make_net()
    with pytest.raises(PruningOrderError, match="before init_model_for_pruning"):
        compute_sparse_masks(model)
    with pytest.raises(PruningOrderError, match="before init_model_for_pruning"):
        init_optimizer_for_pruning(torch.optim.SGD(model.parameters(), lr=0.1))
    asp = init_model_for_pruning(model, allow_recompute_mask=True)
    with pytest.raises(PruningOrderError, match="before compute_sparse_masks"):
        restore_pruned_weights(model)
    with pytest.raises(PruningOrderError, match="before compute_sparse_masks"):
        asp.to_plan()
    with pytest.raises(PruningOrderError, match="already has a sparsity mask"):
        init_model_for_pruning(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    asp.init_optimizer_for_pruning(opt)
    with pytest.raises(PruningOrderError, match="already called"):
        asp.init_optimizer_for_pruning(opt)


def test_restore_needs_allow_recompute_mask() -> None:
    asp = ASP(make_net())
    asp.compute_sparse_masks()
    with pytest.raises(ConfigError, match="allow_recompute_mask=True"):
        asp.restore_pruned_weights()


def test_checkpoint_with_masks_for_layers_the_model_lacks() -> None:
    big = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4))
    ASP(big).compute_sparse_masks()
    small = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    asp = ASP(small)
    with pytest.raises(InputError, match=r"masks for 1 layer\(s\) this model lacks.*: 2\.weight.*0\.weight, 1\.weight"):
        asp.load_state_dict(big.state_dict())


def test_bad_mask_calculator_names() -> None:
    with pytest.raises(ConfigError, match="m4n2_1d"):
        ASP(make_net(), "m4n2_3d")
    with pytest.raises(ConfigError, match="N:M mask_calculator"):
        ASP(make_net(), Unstructured(sparsity=0.5), allow_permutation=True)
    assert str(asp_mod.resolve_mask_calculator("m8n4_1d").name) == str(SemiStructured(n=4, m=8))
