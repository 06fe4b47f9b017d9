"""Every model of the zoo compiles at 2:4 with ONNX parity and a clean audit (the core 'done when')."""

import pytest
import torch

import graphprune
from graphprune import SkipReason
from models import zoo

SMALL = [n for n, spec in zoo.MODELS.items() if "large" not in spec.tags and "real" not in spec.tags]


def _nm_along(w: torch.Tensor, axis: int, n: int = 2, m: int = 4) -> bool:
    t = w.detach().movedim(axis, -1)
    return bool(((t.reshape(-1, m) != 0).sum(-1) <= n).all())


@pytest.mark.parametrize("name", SMALL)
def test_zoo_model_compiles_at_2to4_with_parity(name, tmp_path):
    model, inputs = zoo.build(name)
    res = graphprune.compile(model, inputs, output_dir=tmp_path)
    assert res.report.capture["method"] == "export"
    assert res.validation["masked_vs_folded"]["ok"]
    assert res.validation["onnx_parity"]["ok"], res.validation["onnx_parity"]
    assert res.report.audit["ok"], res.report.audit["summary"]
    counts = res.report.counts()
    assert counts["pruned"] >= 1
    # every pruned weight is 2:4 along its K axis in the returned model
    for d in res.report.decisions:
        if d.pruned:
            assert _nm_along(res.model.get_parameter(d.param), d.k_axis), d.param
    # every skip carries a reason and a message naming the layer
    for d in res.report.decisions:
        if not d.pruned:
            assert d.reason is not None and d.param.split(".")[0] in d.message


def test_gpt2_conv1d_weights_are_2to4_along_k_axis_0(tmp_path):
    model, inputs = zoo.build("hf_gpt2")
    res = graphprune.compile(model, inputs, output_dir=tmp_path)
    conv1d = [d for d in res.report.decisions if d.op == "hf_conv1d"]
    assert len(conv1d) == 8 and all(d.pruned and d.k_axis == 0 for d in conv1d)
    for d in conv1d:
        w = res.model.get_parameter(d.param)  # stored [in, out]
        assert _nm_along(w, 0) and not _nm_along(w, 1)
    assert res.report.audit["ok"]


def test_structure_of_special_models(tmp_path):
    res = graphprune.compile(*zoo.build("k_not_div_4"), output_dir=tmp_path / "a")
    assert res.report.counts().get("k_not_divisible") == 1
    res = graphprune.compile(*zoo.build("tied_weights"), output_dir=tmp_path / "b")
    tied = [d for d in res.report.decisions if d.reason == SkipReason.TIED_WEIGHT]
    assert len(tied) == 1


@pytest.mark.slow
def test_real_minilm_at_2to4(tmp_path):
    model, inputs = zoo.build("minilm")
    res = graphprune.compile(model, inputs, output_dir=tmp_path)
    assert res.report.counts() == {"pruned": 37, "unsupported_op": 3}  # 36 encoder Linears + pooler; 3 embeddings
    assert res.validation["onnx_parity"]["ok"] and res.report.audit["ok"]
    pruned = [d for d in res.report.decisions if d.pruned]
    assert sum(d.zeros for d in pruned) / sum(d.numel for d in pruned) == pytest.approx(0.5, abs=1e-6)
