"""Hidden-size pruning of RMSNorm residual streams (Llama): exact, saved, reloaded; LayerNorm stays dense."""

from __future__ import annotations

import math

import pytest
import torch

from graphprune.config import FFN, Heads, Hidden, parse_pattern
from graphprune.errors import ConfigError, ValidationError
from graphprune.report import SkipReason
from graphprune.serialize import load, save_pretrained
from graphprune.structured import rewrite as structured_rewrite
from graphprune.structured.rescale_norms import rescale_rms_norm
from models import zoo
from tests.structured._helpers import onnx_parity, prune_copy, torch_parity


def _logits(model, inputs):
    with torch.no_grad():
        return model(*inputs).logits


def test_llama_lm_hidden_shrinks_exactly(tmp_path):
    model, inputs = zoo.build("hf_llama_lm")
    original, shrunk, result = prune_copy(model.eval(), inputs, [Hidden(ratio=0.25)])
    rec = next(r for r in result.groups if r.kind == "hidden")
    assert rec.pruned and (rec.channels_before, rec.channels_after) == (64, 48)
    assert tuple(shrunk.model.embed_tokens.weight.shape) == (1024, 48)
    assert shrunk.lm_head.weight is shrunk.model.embed_tokens.weight  # the tie survives
    assert shrunk.model.layers[0].self_attn.q_proj.in_features == 48 and shrunk.model.layers[0].mlp.down_proj.out_features == 48
    for norm in (shrunk.model.norm, shrunk.model.layers[1].input_layernorm):
        assert tuple(norm.weight.shape) == (48,)
        assert math.isclose(norm.variance_epsilon, original.config.rms_norm_eps * 64 / 48, rel_tol=1e-12)
    assert shrunk.config.hidden_size == 48
    masked = result.masked_equivalent(original)
    assert torch_parity(shrunk, masked, inputs).max_abs < 1e-5
    assert onnx_parity(shrunk, masked, inputs, tmp_path).ok


def test_without_the_norm_rescale_the_parity_check_fails(monkeypatch):
    # the rescale is what makes hidden pruning exact; without it the verify step must refuse the result
    monkeypatch.setattr(structured_rewrite, "rescale_rms_norm", lambda module, n, n_kept, name="": {})
    model, inputs = zoo.build("hf_llama_lm")
    with pytest.raises(ValidationError):
        prune_copy(model.eval(), inputs, [Hidden(ratio=0.25)])


def test_rescale_rms_norm_matches_the_zero_padded_norm():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    full = LlamaRMSNorm(16, eps=1e-3)
    with torch.no_grad():
        full.weight.uniform_(0.5, 1.5)
    keep = torch.tensor([0, 2, 3, 5, 8, 9, 12, 15])
    x = torch.zeros(3, 16)
    x[:, keep] = torch.randn(3, 8)
    slim = LlamaRMSNorm(8, eps=1e-3)
    with torch.no_grad():
        slim.weight.copy_(full.weight[keep])
    assert rescale_rms_norm(slim, 16, 8) == {"variance_epsilon": pytest.approx(2e-3)}
    torch.testing.assert_close(slim(x[:, keep]), full(x)[:, keep], rtol=1e-6, atol=1e-6)


def test_llama_lm_all_three_round_trip_through_from_pretrained_and_load(tmp_path):
    from transformers import AutoModelForCausalLM

    model, inputs = zoo.build("hf_llama_lm")
    original, shrunk, result = prune_copy(model.eval(), inputs, [Heads(ratio=0.5), FFN(ratio=0.5), Hidden(ratio=0.25)])
    assert torch_parity(shrunk, result.masked_equivalent(original), inputs).ok
    save_pretrained(shrunk, tmp_path, result)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert reloaded.config.hidden_size == 48 and reloaded.model.layers[0].mlp.gate_proj.out_features == 64
    torch.testing.assert_close(_logits(reloaded, inputs), _logits(shrunk, inputs), rtol=0, atol=0)
    via_delta = load(tmp_path, lambda: zoo.build("hf_llama_lm")[0]).eval()
    torch.testing.assert_close(_logits(via_delta, inputs), _logits(shrunk, inputs), rtol=0, atol=0)


def test_stream_reaching_the_output_stays_dense():
    model, inputs = zoo.build("hf_llama")  # LlamaModel returns the hidden states themselves
    _, shrunk, result = prune_copy(model.eval(), inputs, [Hidden(ratio=0.25)])
    assert shrunk.config.hidden_size == 64 and shrunk.embed_tokens.weight.shape[1] == 64
    rec = next(r for r in result.groups if r.kind == "hidden")
    assert not rec.pruned and rec.reason == SkipReason.UNSLICEABLE_GROUP and "model output" in rec.message


def test_layer_norm_stream_is_a_hidden_group_left_dense_with_the_reason():
    model, inputs = zoo.build("hf_bert")
    _, shrunk, result = prune_copy(model.eval(), inputs, [Hidden(ratio=0.25)])
    hidden = [r for r in result.groups if r.kind == "hidden"]
    assert hidden and not any(r.pruned for r in result.groups)
    assert all(r.reason == SkipReason.UNSLICEABLE_GROUP and "layer_norm normalizes over these channels" in r.message for r in hidden)
    assert shrunk.config.hidden_size == 64


def test_hidden_pattern_strings():
    assert parse_pattern("hidden:0.25,2:4")[0] == Hidden(ratio=0.25)
    with pytest.raises(ConfigError, match="ratio"):
        parse_pattern("hidden:1.0")
    with pytest.raises(ConfigError, match="twice"):
        parse_pattern("hidden:0.25,hidden:0.5")


def test_iterative_hidden_steps_compose_to_the_one_shot_rescale():
    from graphprune.structured.iterative import prune_structured_iteratively

    model, inputs = zoo.build("hf_llama_lm")
    eps0 = model.config.rms_norm_eps
    res = prune_structured_iteratively(model.eval(), inputs, [0.125, 0.25], lambda r: [Hidden(ratio=r)])
    assert [s.parity["ok"] for s in res.steps] == [True, True]
    assert model.config.hidden_size == 48 and tuple(model.model.norm.weight.shape) == (48,)
    # eps scaled by 64/56 then 56/48: the same as one step of 64/48
    assert math.isclose(model.model.norm.variance_epsilon, eps0 * 64 / 48, rel_tol=1e-12)


def test_other_patterns_report_the_stream_and_why_it_stays():
    model, inputs = zoo.build("hf_bert")
    _, _, result = prune_copy(model.eval(), inputs, [FFN(ratio=0.5)])
    hidden = [r for r in result.groups if r.kind == "hidden"]
    assert hidden and all("only the hidden:R pattern" in r.message and "layer_norm" in r.message for r in hidden)
    assert any(r.pruned for r in result.groups if r.kind == "ffn")


def _tiny_lm(config_cls: str, lm_cls: str):
    import transformers

    config = getattr(transformers, config_cls)(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, use_cache=False, attn_implementation="eager",
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    return getattr(transformers, lm_cls)(config).eval(), (torch.randint(3, 512, (2, 12)),)


@pytest.mark.parametrize("arch", [("Qwen2Config", "Qwen2ForCausalLM"), ("Qwen3Config", "Qwen3ForCausalLM"), ("MistralConfig", "MistralForCausalLM")])
def test_other_rmsnorm_lms_shrink_exactly(arch):
    model, inputs = _tiny_lm(*arch)
    original, shrunk, result = prune_copy(model, inputs, [Hidden(ratio=0.25), Heads(ratio=0.5), FFN(ratio=0.5)])
    assert shrunk.config.hidden_size == 48 and result.parity["ok"]
    assert torch_parity(shrunk, result.masked_equivalent(original), inputs).max_abs < 1e-5


def test_gemma_norms_are_refused_by_the_parity_check_with_the_reason():
    model, inputs = _tiny_lm("GemmaConfig", "GemmaForCausalLM")
    with pytest.raises(ValidationError, match=r"Gemma's \(1 \+ weight\) norms"):
        prune_copy(model, inputs, [Hidden(ratio=0.25)])


def test_a_pattern_matching_no_group_is_said():
    model, inputs = zoo.build("residual_cnn")
    _, _, result = prune_copy(model.eval(), inputs, [Hidden(ratio=0.25), Heads(ratio=0.5)])
    assert any(n.startswith("hidden:0.25: ") and "no residual-stream" in n for n in result.notes)
    assert any(n.startswith("heads:0.5: ") and "no attention-head group" in n for n in result.notes)
    assert not any(r.pruned for r in result.groups)


def test_compile_reports_the_structured_notes(tmp_path):
    import graphprune
    from graphprune.config import CompileConfig

    model, inputs = zoo.build("residual_cnn")
    res = graphprune.compile(model, inputs, CompileConfig(pattern=parse_pattern("channels:0.5,heads:0.5")), output_dir=tmp_path)
    assert res.ok and res.model.layer2.conv1.out_channels == 16
    assert "structured: heads:0.5: _ResidualCNN has no attention-head group, so this pattern removes nothing" in res.report.notes


def test_config_without_head_dim_keeps_its_hidden_size():
    # a config that derives the head width from hidden_size cannot take a pruned hidden size,
    # whether or not heads were pruned too (heads arrive as a list from prune_structured)
    from torch import nn
    from transformers import PreTrainedConfig

    from graphprune.structured.remove_heads import update_hf_config

    holder = nn.Module()
    holder.config = PreTrainedConfig(hidden_size=64, num_attention_heads=4)
    assert getattr(holder.config, "head_dim", None) is None
    for heads in ([], [(4, 4, 2, 2)]):
        changed, notes = update_hf_config(holder, heads=heads, hidden=[(64, 48)])
        assert "hidden_size" not in changed and holder.config.hidden_size == 64
        assert any("derives the head width from hidden_size" in n for n in notes)
