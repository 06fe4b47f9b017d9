"""HF attention attributes and configs after head / FFN pruning, and save/load round trips."""

from __future__ import annotations

import json

import pytest
import torch

from graphprune.checkpoint.delta import DELTA_FILE, WEIGHTS_FILE, load, save_pretrained, save_pruned
from graphprune.config import FFN, Channels, Heads
from models import zoo
from tests.structured._helpers import prune_copy, torch_parity

HEADS_FFN = (Heads(ratio=0.5), FFN(ratio=0.5))


def _outputs(model, inputs):
    with torch.no_grad():
        out = model(*inputs)
    return out


def test_bert_attention_attributes():
    model, inputs = zoo.build("hf_bert")
    _, shrunk, result = prune_copy(model, inputs, HEADS_FFN)
    attn = shrunk.encoder.layer[0].attention.self
    assert (attn.num_attention_heads, attn.attention_head_size, attn.all_head_size) == (2, 16, 32)
    assert attn.query.out_features == 32 and shrunk.encoder.layer[0].attention.output.dense.in_features == 32
    assert shrunk.encoder.layer[0].intermediate.dense.out_features == 64
    assert shrunk.config.intermediate_size == 64
    assert shrunk.config.num_attention_heads == 4  # BERT's config cannot express pruned heads ...
    assert any("cannot express pruned heads" in n for n in result.notes)  # ... and the result says so
    assert result.delta["modules"]["encoder.layer.0.attention.self"] == {"num_attention_heads": 2, "all_head_size": 32}


def test_gpt2_attention_attributes():
    model, inputs = zoo.build("hf_gpt2")
    _, shrunk, _ = prune_copy(model, inputs, HEADS_FFN)
    attn = shrunk.h[0].attn
    assert (attn.num_heads, attn.head_dim, attn.split_size) == (2, 16, 32)
    assert attn.c_attn.weight.shape == (64, 96) and attn.c_attn.nf == 96 and attn.c_proj.weight.shape == (32, 64)
    assert shrunk.config.n_inner == 64


def test_llama_gqa_stays_consistent():
    model, inputs = zoo.build("hf_llama")
    _, shrunk, result = prune_copy(model, inputs, HEADS_FFN)
    for layer in shrunk.layers:
        a = layer.self_attn
        assert a.q_proj.out_features == 2 * a.head_dim and a.k_proj.out_features == a.v_proj.out_features == a.head_dim
        assert a.num_key_value_groups == 2 and isinstance(a.num_key_value_groups, int)
        assert a.o_proj.in_features == 32
        assert layer.mlp.gate_proj.out_features == layer.mlp.up_proj.out_features == layer.mlp.down_proj.in_features == 64
    cfg = shrunk.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (2, 1, 16, 64)
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    heads = [g for g in result.groups if g.kind == "heads"]
    assert all(g.heads["num_heads_after"] == 2 and g.heads["num_kv_heads_after"] == 1 for g in heads)


def test_vit_attention_attributes():
    model, inputs = zoo.build("hf_vit")
    _, shrunk, _ = prune_copy(model, inputs, (Heads(ratio=0.5),))
    attn = shrunk.vit.layers[0].attention
    heads_attr = next(getattr(attn, n) for n in ("num_attention_heads", "num_heads") if hasattr(attn, n))
    assert heads_attr == 2


def test_save_pruned_and_load_round_trip_cnn(tmp_path):
    model, inputs = zoo.build("residual_cnn")
    _, shrunk, result = prune_copy(model, inputs, [Channels(ratio=0.5)])
    save_pruned(shrunk, tmp_path, result.delta)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DELTA_FILE, WEIGHTS_FILE]
    delta = json.loads((tmp_path / DELTA_FILE).read_text())
    assert delta["tensors"]["layer2.conv2.weight"] == [16, 16, 3, 3]
    reloaded = load(tmp_path, lambda: zoo.build("residual_cnn")[0])
    assert reloaded.layer2.conv2.out_channels == 16
    assert torch.equal(_outputs(reloaded, inputs), _outputs(shrunk, inputs))


def test_save_pruned_and_load_keeps_tied_weights(tmp_path):
    model, inputs = zoo.build("tied_weights")
    _, shrunk, result = prune_copy(model, inputs, [Channels(ratio=0.5)])
    save_pruned(shrunk, tmp_path, result)
    reloaded = load(tmp_path, zoo.build("tied_weights")[0])
    assert reloaded.head.weight is reloaded.embed.weight and reloaded.embed.embedding_dim == 16
    assert torch.equal(_outputs(reloaded, inputs), _outputs(shrunk, inputs))


@pytest.mark.parametrize("name", ["hf_bert", "hf_gpt2"])
def test_graphprune_load_hf_heads_and_ffn(tmp_path, name):
    model, inputs = zoo.build(name)
    _, shrunk, result = prune_copy(model, inputs, HEADS_FFN)
    save_pretrained(shrunk, tmp_path, result)
    reloaded = load(tmp_path, lambda: zoo.build(name)[0])
    torch.testing.assert_close(_outputs(reloaded, inputs).last_hidden_state, _outputs(shrunk, inputs).last_hidden_state, rtol=0, atol=0)


def test_from_pretrained_llama_heads_and_ffn(tmp_path):
    from transformers import AutoModel

    model, inputs = zoo.build("hf_llama")
    _, shrunk, result = prune_copy(model, inputs, HEADS_FFN)
    save_pretrained(shrunk, tmp_path, result)
    reloaded = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert reloaded.layers[0].self_attn.q_proj.out_features == 32
    torch.testing.assert_close(_outputs(reloaded, inputs).last_hidden_state, _outputs(shrunk, inputs).last_hidden_state, rtol=0, atol=0)
    via_delta = load(tmp_path, lambda: zoo.build("hf_llama")[0])
    torch.testing.assert_close(_outputs(via_delta, inputs).last_hidden_state, _outputs(shrunk, inputs).last_hidden_state, rtol=0, atol=0)


def test_from_pretrained_bert_ffn(tmp_path):
    from transformers import AutoModel

    model, inputs = zoo.build("hf_bert")
    original, shrunk, result = prune_copy(model, inputs, (FFN(ratio=0.5),))
    shrunk.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert reloaded.config.intermediate_size == 64
    torch.testing.assert_close(_outputs(reloaded, inputs).last_hidden_state, _outputs(shrunk, inputs).last_hidden_state, rtol=0, atol=0)
    assert torch_parity(shrunk, result.masked_equivalent(original), inputs).ok
