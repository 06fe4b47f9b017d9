"""Heads of nn.MultiheadAttention: removed through graphprune.layers.SlimMultiheadAttention."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from graphprune.analysis.groups import find_groups
from graphprune.config import FFN, Heads
from graphprune.errors import InputError
from graphprune.layers import SlimMultiheadAttention, slim_multihead_attention
from graphprune.report import SkipReason
from graphprune.serialize import DELTA_FILE, load, save_pruned
from models import zoo
from tests.structured._helpers import onnx_parity, prune_copy, torch_parity


def _dense_with_heads_zeroed(mha: nn.MultiheadAttention, drop: list[int]) -> nn.MultiheadAttention:
    """Independent reference: the dense module with the dropped heads' q/k/v rows and out columns zeroed."""
    ref = copy.deepcopy(mha)
    e, d = mha.embed_dim, mha.head_dim
    with torch.no_grad():
        for hd in drop:
            rows = slice(hd * d, (hd + 1) * d)
            if ref.in_proj_weight is not None:
                for i in range(3):
                    ref.in_proj_weight[i * e + rows.start : i * e + rows.stop] = 0
            else:
                for w in (ref.q_proj_weight, ref.k_proj_weight, ref.v_proj_weight):
                    w[rows] = 0
            if ref.in_proj_bias is not None:
                for i in range(3):
                    ref.in_proj_bias[i * e + rows.start : i * e + rows.stop] = 0
            ref.out_proj.weight[:, rows] = 0
    return ref


def _slim(mha: nn.MultiheadAttention, keep: list[int]) -> nn.MultiheadAttention:
    """Slice by hand (not through remove_channels) and swap the class."""
    slim = copy.deepcopy(mha)
    e, d = mha.embed_dim, mha.head_dim
    rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep])
    with torch.no_grad():
        if slim.in_proj_weight is not None:
            idx = torch.cat([rows + i * e for i in range(3)])
            slim.in_proj_weight = nn.Parameter(mha.in_proj_weight[idx].clone())
        else:
            for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                setattr(slim, n, nn.Parameter(getattr(mha, n)[rows].clone()))
        if slim.in_proj_bias is not None:
            slim.in_proj_bias = nn.Parameter(mha.in_proj_bias[torch.cat([rows + i * e for i in range(3)])].clone())
        slim.out_proj.weight = nn.Parameter(mha.out_proj.weight[:, rows].clone())
    slim_multihead_attention(slim, keep, original_num_heads=mha.num_heads)
    return slim.eval()


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 12])
def test_slim_module_equals_dense_with_heads_zeroed(batch_first, kdim):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()
    keep, drop = [0, 2], [1, 3]
    slim, ref = _slim(mha, keep), _dense_with_heads_zeroed(mha, drop)
    q = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    kv = torch.randn(3, 7, kdim or 16) if batch_first else torch.randn(7, 3, kdim or 16)
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    kpm[1, 5:] = True
    causal = torch.ones(5, 7, dtype=torch.bool).triu(3)
    with torch.no_grad():
        for kw in ({}, {"key_padding_mask": kpm}, {"attn_mask": causal}, {"attn_mask": causal.float() * -1e4, "key_padding_mask": kpm}):
            out, w = slim(q, kv, kv, need_weights=False, **kw)
            exp, _ = ref(q, kv, kv, need_weights=False, **kw)
            assert w is None
            torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-5)
    assert isinstance(slim, nn.MultiheadAttention) and slim.num_heads == 2


def test_slim_module_attention_weights_are_the_kept_heads():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    slim = _slim(mha, [1, 3])
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        _, per_head_dense = mha(x, x, x, average_attn_weights=False)
        out, per_head = slim(x, x, x, average_attn_weights=False)
        _, avg = slim(x, x, x)
        exp, _ = _dense_with_heads_zeroed(mha, [0, 2])(x, x, x)
    torch.testing.assert_close(per_head, per_head_dense[:, [1, 3]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(avg, per_head_dense[:, [1, 3]].mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-5)


def test_slim_module_takes_a_per_head_mask_of_the_original_head_count():
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    keep = [0, 3]
    slim, ref = _slim(mha, keep), _dense_with_heads_zeroed(mha, [1, 2])
    x = torch.randn(2, 5, 16)
    mask = torch.randn(2 * 4, 5, 5)  # float, per (batch, head) as nn.MultiheadAttention takes it
    with torch.no_grad():
        torch.testing.assert_close(slim(x, x, x, attn_mask=mask)[0], ref(x, x, x, attn_mask=mask)[0], rtol=1e-5, atol=1e-5)


def test_unbatched_input():
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(16, 4).eval()
    slim, ref = _slim(mha, [2, 3]), _dense_with_heads_zeroed(mha, [0, 1])
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(slim(x, x, x)[0], ref(x, x, x)[0], rtol=1e-5, atol=1e-5)


def test_attention_block_heads_shrink_exports_and_round_trips(tmp_path):
    model, inputs = zoo.build("attention_block")
    original, shrunk, result = prune_copy(model.eval(), inputs, [Heads(ratio=0.5), FFN(ratio=0.5)])
    assert isinstance(shrunk.attn, SlimMultiheadAttention) and shrunk.attn.num_heads == 2
    assert tuple(shrunk.attn.in_proj_weight.shape) == (96, 64) and tuple(shrunk.attn.out_proj.weight.shape) == (64, 32)
    rec = next(r for r in result.groups if r.kind == "heads")
    assert rec.pruned and rec.units_before == 4 and rec.units_after == 2
    masked = result.masked_equivalent(original)
    assert torch_parity(shrunk, masked, inputs).max_abs < 1e-5
    assert onnx_parity(shrunk, masked, inputs, tmp_path).ok

    save_pruned(shrunk, tmp_path / "saved", result.delta)
    assert json.loads((tmp_path / "saved" / DELTA_FILE).read_text())["classes"] == {"attn": "graphprune.layers.SlimMultiheadAttention"}
    rebuilt = load(tmp_path / "saved", lambda: zoo.build("attention_block")[0]).eval()
    assert isinstance(rebuilt.attn, SlimMultiheadAttention) and rebuilt.attn.kept_heads == shrunk.attn.kept_heads
    with torch.no_grad():
        assert torch.equal(rebuilt(*inputs), shrunk(*inputs))


def test_transformer_encoder_heads_with_padding_mask():
    torch.manual_seed(4)
    layer = nn.TransformerEncoderLayer(32, 8, 64, batch_first=True, dropout=0.0)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 9, 32)
    original, shrunk, result = prune_copy(enc, (x,), [Heads(ratio=0.5)])
    assert [m.self_attn.num_heads for m in shrunk.layers] == [4, 4]
    masked = result.masked_equivalent(original).eval()
    kpm = torch.zeros(2, 9, dtype=torch.bool)
    kpm[0, 6:] = True
    with torch.no_grad():  # eval + no_grad is where TransformerEncoderLayer's fused fast path would run
        for kw in ({}, {"src_key_padding_mask": kpm}, {"mask": nn.Transformer.generate_square_subsequent_mask(9), "is_causal": True}):
            torch.testing.assert_close(shrunk(x, **kw), masked(x, **kw), rtol=1e-4, atol=1e-5)


def test_add_bias_kv_is_left_dense_with_the_reason():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True, add_bias_kv=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x)[0]

    model = Block().eval()
    x = torch.randn(2, 5, 16)
    heads = [g for g in find_groups(model, (x,)).groups if g.kind == "heads"]
    assert heads and not heads[0].prunable and "add_bias_kv" in heads[0].blockers[0].reason
    _, shrunk, result = prune_copy(model, (x,), [Heads(ratio=0.5)])
    assert type(shrunk.attn) is nn.MultiheadAttention and shrunk.attn.num_heads == 4
    assert any(d.reason == SkipReason.UNSLICEABLE_GROUP for d in result.decisions)


def test_delta_cannot_name_an_arbitrary_class(tmp_path):
    model, inputs = zoo.build("attention_block")
    _, shrunk, result = prune_copy(model.eval(), inputs, [Heads(ratio=0.5)])
    save_pruned(shrunk, tmp_path, result.delta)
    delta = json.loads((tmp_path / DELTA_FILE).read_text())
    delta["classes"]["attn"] = "os.system"
    (tmp_path / DELTA_FILE).write_text(json.dumps(delta))
    with pytest.raises(InputError, match="os.system"):
        load(tmp_path, lambda: zoo.build("attention_block")[0])


def test_compile_heads_then_2to4_prunes_the_slim_in_proj(tmp_path):
    import graphprune
    from graphprune.config import CompileConfig, parse_pattern

    model, inputs = zoo.build("attention_block")
    res = graphprune.compile(model, inputs, CompileConfig(pattern=parse_pattern("heads:0.5,2:4")), output_dir=tmp_path)
    assert res.ok, res.validation
    assert isinstance(res.model.attn, SlimMultiheadAttention)
    by_param = {d.param: d for d in res.report.decisions}
    assert by_param["attn.in_proj_weight"].pruned and tuple(by_param["attn.in_proj_weight"].shape) == (96, 64)
    w = res.model.attn.in_proj_weight.detach().reshape(-1, 4)
    assert bool(((w != 0).sum(1) <= 2).all())
