"""Coupled-group analysis (graphprune.analysis.groups) on small models: structure only, no rewriting."""

from __future__ import annotations

import pytest

from graphprune.analysis.groups import find_groups
from models import zoo
from tests.structured._helpers import concat_net, grouped_net


def _by_name(groups):
    return {g.name: g for g in groups}


def _targets(g):
    return {(m.target, m.axis) for m in g.members}


def test_residual_add_couples_shortcut_and_block_output():
    model, inputs = zoo.build("residual_cnn")
    groups = _by_name(find_groups(model, inputs).groups)
    stream = groups["layer2.downsample.0"]
    assert stream.prunable and stream.kind == "channels" and stream.units == 32
    t = _targets(stream)
    # shortcut conv rows, block's last conv rows, both BNs, the next block's input, the classifier's columns
    for need in [
        ("layer2.downsample.0.weight", 0),
        ("layer2.conv2.weight", 0),
        ("layer2.bn2.weight", 0),
        ("layer2.bn2.running_var", 0),
        ("layer3.conv1.weight", 1),
        ("layer3.conv2.weight", 0),
        ("fc.weight", 1),
    ]:
        assert need in t, need
    inner = groups["layer2.conv1"]
    assert _targets(inner) == {
        ("layer2.conv1.weight", 0), ("layer2.bn1.weight", 0), ("layer2.bn1.bias", 0),
        ("layer2.bn1.running_mean", 0), ("layer2.bn1.running_var", 0), ("layer2.conv2.weight", 1),
    }
    assert not groups["fc"].prunable and "model output" in groups["fc"].blockers[0].reason


def test_depthwise_conv_couples_its_input_and_output_channels():
    model, inputs = zoo.build("depthwise_cnn")
    groups = _by_name(find_groups(model, inputs).groups)
    g = groups["blocks.0.expand.0"]
    t = _targets(g)
    assert ("blocks.0.depthwise.0.weight", 0) in t  # depthwise rows go with the expand rows
    assert ("blocks.0.project.0.weight", 1) in t
    assert g.prunable and g.units == 64


def test_concat_offsets_and_flatten_to_linear():
    model, inputs = concat_net()
    groups = find_groups(model, inputs).groups
    a = next(g for g in groups if g.name == "a")
    b = next(g for g in groups if g.name == "b")
    # BN over the concat and the 1x1 conv's input split at offset 16
    assert {(m.target, m.axis, m.offset, m.size) for m in a.members} >= {("bn.weight", 0, 0, 16), ("mix.weight", 1, 0, 16)}
    assert {(m.target, m.axis, m.offset, m.size) for m in b.members} >= {("bn.weight", 0, 16, 16), ("mix.weight", 1, 16, 16)}
    mix = next(g for g in groups if g.name == "mix")
    fc_cols = next(m for m in mix.members if m.target == "fc.weight")
    assert (fc_cols.axis, fc_cols.size) == (1, 16 * 16)  # each channel spans 4x4 flattened features
    assert mix.units == 16 and all(g.prunable for g in (a, b, mix))


def test_transformer_groups_heads_ffn_and_dense_residual_stream():
    model, inputs = zoo.build("hf_bert")
    groups = find_groups(model, inputs).groups
    heads = [g for g in groups if g.kind == "heads"]
    ffn = [g for g in groups if g.kind == "ffn" and g.prunable]
    assert [g.name for g in heads] == ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"]
    assert all(g.units == 4 and g.heads.num_heads == 4 and g.prunable for g in heads)
    assert _targets(heads[0]) >= {
        ("encoder.layer.0.attention.self.query.weight", 0), ("encoder.layer.0.attention.self.key.weight", 0),
        ("encoder.layer.0.attention.self.value.weight", 0), ("encoder.layer.0.attention.output.dense.weight", 1),
    }
    assert len(ffn) == 2
    stream = next(g for g in groups if g.name == "embeddings.word_embeddings")
    assert not stream.prunable and "layer_norm" in stream.blockers[0].reason


def test_gqa_unit_is_a_kv_head_with_its_query_group():
    model, inputs = zoo.build("hf_llama")
    heads = [g for g in find_groups(model, inputs).groups if g.kind == "heads"]
    assert len(heads) == 2
    g = heads[0]
    assert g.prunable and g.units == 2
    assert (g.heads.num_heads, g.heads.num_kv_heads, g.heads.head_dim) == (4, 2, 16)
    sizes = {m.target.split(".")[-2]: m.size for m in g.members}
    assert sizes == {"q_proj": 64, "k_proj": 32, "v_proj": 32, "o_proj": 64}


def test_fused_qkv_split_gpt2():
    model, inputs = zoo.build("hf_gpt2")
    heads = [g for g in find_groups(model, inputs).groups if g.kind == "heads"]
    g = heads[0]
    qkv = sorted((m.offset, m.size) for m in g.members if m.target == "h.0.attn.c_attn.weight")
    assert qkv == [(0, 64), (64, 64), (128, 64)]  # q, k, v thirds of one Conv1D weight


@pytest.mark.parametrize("name", ["hf_vit", "hf_convnext", "hf_distilbert"])
def test_zoo_models_have_prunable_groups(name):
    model, inputs = zoo.build(name)
    groups = find_groups(model, inputs).groups
    assert any(g.prunable for g in groups)


def test_unsliceable_group_names_the_node():
    model, inputs = grouped_net()
    groups = _by_name(find_groups(model, inputs).groups)
    assert not groups["c1"].prunable
    assert "grouped convolution" in groups["c1"].blockers[0].reason and groups["c1"].blockers[0].node.startswith("conv2d")
    assert groups["c2"].prunable


def test_multihead_attention_heads_group_from_the_module():
    model, inputs = zoo.build("attention_block")
    groups = find_groups(model, inputs).groups
    mha = [g for g in groups if g.kind == "heads"]
    assert len(mha) == 1 and mha[0].prunable and mha[0].units == 4 and mha[0].name == "attn"
    assert mha[0].heads is not None and (mha[0].heads.num_heads, mha[0].heads.head_dim) == (4, 16)
    spans = {(m.target, m.axis, m.offset, m.size) for m in mha[0].members}
    assert {("attn.in_proj_weight", 0, o, 64) for o in (0, 64, 128)} <= spans
    assert ("attn.out_proj.weight", 1, 0, 64) in spans
    assert any(g.prunable and g.name == "ffn.0" for g in groups)
