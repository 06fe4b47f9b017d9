"""prune_structured end to end on the zoo at 50%: the shrunk model runs, has fewer parameters, and
computes what the masked-equivalent dense model computes (in torch and in onnxruntime)."""

from __future__ import annotations

import pytest
import torch

from graphprune.config import FFN, Channels, Heads
from graphprune.report import SkipReason
from graphprune.structured import prune_structured
from models import zoo
from tests.structured._helpers import concat_net, n_params, onnx_parity, prune_copy, torch_parity

HALF = (Channels(ratio=0.5), Heads(ratio=0.5), FFN(ratio=0.5))

# the models of the "done when"; each is exported and run in onnxruntime
ONNX_MODELS = ["residual_cnn", "depthwise_cnn", "hf_bert", "hf_gpt2", "hf_llama", "hf_vit", "hf_convnext"]


@pytest.mark.parametrize("name", ONNX_MODELS)
def test_zoo_model_shrinks_and_matches_masked_in_onnxruntime(name, tmp_path):
    model, inputs = zoo.build(name)
    before = n_params(model)
    original, shrunk, result = prune_copy(model, inputs, HALF)
    assert result.parity is not None and result.parity["ok"]
    pruned = [g for g in result.groups if g.pruned]
    assert pruned, result.groups
    assert all(g.units_after < g.units_before for g in pruned)
    assert n_params(shrunk) < 0.85 * before
    masked = result.masked_equivalent(original)
    assert torch_parity(shrunk, masked, inputs).ok
    stats = onnx_parity(shrunk, masked, inputs, tmp_path)
    assert stats.ok, stats


@pytest.mark.parametrize("name", ["hf_distilbert", "hf_gpt2_lm", "attention_block", "conv_bn", "tied_weights", "hf_resnet"])
def test_more_zoo_models_match_masked_in_torch(name):
    model, inputs = zoo.build(name)
    original, shrunk, result = prune_copy(model, inputs, HALF)
    assert any(g.pruned for g in result.groups)
    assert torch_parity(shrunk, result.masked_equivalent(original), inputs).ok


def test_residual_cnn_widths_and_report():
    model, inputs = zoo.build("residual_cnn")
    _, shrunk, result = prune_copy(model, inputs, [Channels(ratio=0.5)])
    assert shrunk.layer2.conv2.out_channels == shrunk.layer2.downsample[0].out_channels == 16
    assert shrunk.layer2.bn2.num_features == 16 and shrunk.layer3.conv1.in_channels == 16
    assert shrunk.fc.in_features == 16 and shrunk.fc.out_features == 10
    assert shrunk(*inputs).shape == (1, 10)
    # the classifier output is reported dense with a reason
    assert [d.reason for d in result.decisions] == [SkipReason.UNSLICEABLE_GROUP]
    assert "model output" in result.decisions[0].message
    rec = next(g for g in result.groups if g.name == "layer2.conv1")
    assert rec.units_before == 32 and rec.units_after == 16 and len(rec.removed_units) == 16
    assert 0.5 < rec.importance["kept_share"] <= 1.0
    d = rec.to_dict()
    assert d["kind"] == "channels" and d["reason"] is None


def test_depthwise_groups_attribute():
    model, inputs = zoo.build("depthwise_cnn")
    _, shrunk, _ = prune_copy(model, inputs, [Channels(ratio=0.5)])
    dw = shrunk.blocks[0].depthwise[0]
    assert dw.groups == dw.in_channels == dw.out_channels == 32 and dw.weight.shape == (32, 1, 3, 3)


def test_concat_and_flatten_shrink_exactly():
    model, inputs = concat_net()
    original, shrunk, result = prune_copy(model, inputs, [Channels(ratio=0.5)])
    assert shrunk.bn.num_features == 16 and shrunk.mix.in_channels == 16
    assert shrunk.fc.in_features == 8 * 16
    assert torch_parity(shrunk, result.masked_equivalent(original), inputs).ok


@pytest.mark.parametrize("importance", ["l2", "taylor", "bn_scale", "activation"])
def test_importance_methods_with_calibration(importance):
    model, inputs = zoo.build("residual_cnn")
    gen = torch.Generator().manual_seed(1)
    calib = [(torch.randn(2, 3, 32, 32, generator=gen),) for _ in range(2)]
    original, shrunk, result = prune_copy(model, inputs, [Channels(ratio=0.5, importance=importance)], calibration=calib)
    assert sum(g.pruned for g in result.groups) == 5
    assert torch_parity(shrunk, result.masked_equivalent(original), inputs).ok
    assert all(p.grad is None for p in shrunk.parameters())


def test_global_scope_prunes_unevenly_and_keeps_multiples_of_round_to():
    model, inputs = zoo.build("hf_resnet")
    _, _, result = prune_copy(model, inputs, [Channels(ratio=0.5, scope="global")])
    after = [g.units_after for g in result.groups if g.pruned]
    assert after and all(a % 8 == 0 or a == g.units_before for a, g in zip(after, [g for g in result.groups if g.pruned]))


def test_include_exclude_globs():
    model, inputs = zoo.build("residual_cnn")
    _, shrunk, result = prune_copy(model, inputs, [Channels(ratio=0.5)], exclude=["layer2.*"])
    assert shrunk.layer2.conv1.out_channels == 32
    assert shrunk.layer1.conv1.out_channels == 8
    assert any(d.reason == SkipReason.EXCLUDED_BY_FILTER for d in result.decisions)


def test_ratio_zero_changes_nothing():
    model, inputs = zoo.build("residual_cnn")
    before = n_params(model)
    _, shrunk, result = prune_copy(model, inputs, [Channels(ratio=0.0)])
    assert n_params(shrunk) == before and not any(g.pruned for g in result.groups)
    assert result.delta["tensors"] == {}


def test_result_is_json_ready_and_model_mutated_in_place():
    import json

    model, inputs = zoo.build("hf_llama")
    result = prune_structured(model, inputs, HALF)
    assert result.model is model
    text = json.dumps({"groups": [g.to_dict() for g in result.groups], "delta": result.delta, "decisions": [d.to_dict() for d in result.decisions]})
    back = json.loads(text)
    assert back["delta"]["config"] == {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64}
    assert back["delta"]["tensors"]["layers.0.self_attn.k_proj.weight"] == [16, 64]
    # LlamaAttention reads no head count (views use -1; num_key_value_groups stays 2): only Linear sizes change
    assert back["delta"]["modules"]["layers.0.self_attn.q_proj"] == {"out_features": 32}
    assert back["groups"][1]["heads"] == {"num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "num_heads_after": 2, "num_kv_heads_after": 1}
