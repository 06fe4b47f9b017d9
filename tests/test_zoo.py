"""The reference model zoo (models/zoo.py) and the real-sentence helper (models/text.py).

Every registered model that is not tagged "large" must build deterministically, run forward,
export with `torch.export.export(strict=False)` to a program that computes what the model computes,
and really have the structure its tags claim.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.utils._pytree as pytree
from torch import nn

from graphprune.runtime.compare import assert_close
from models import text, zoo

QUICK = zoo.names(exclude={"large"})
LARGE = zoo.names(include={"large"})
KNOWN_TAGS = {
    "attention", "cnn", "conv1d", "depthwise", "functional", "gqa", "grouped", "hf", "k_not_div_4",
    "large", "mlp", "real", "residual", "rmsnorm", "text", "tied", "transposed", "vision",
}  # fmt: skip


def _leaves(tree: object) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _run(model: nn.Module, inputs: tuple) -> object:
    with torch.no_grad():
        return model(*inputs)


def _linear_in_features(model: nn.Module) -> list[int]:
    """K of every Linear-like layer: nn.Linear in_features, transformers Conv1D weight rows."""
    from transformers.pytorch_utils import Conv1D

    ks = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            ks.append(m.in_features)
        elif isinstance(m, Conv1D):
            ks.append(m.weight.shape[0])
    return ks


def _shared_parameters(model: nn.Module) -> list[list[str]]:
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def _aten_targets(ep: torch.export.ExportedProgram) -> set[str]:
    return {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}


# --------------------------------------------------------------------------- registry


def test_registry_is_typed_and_consistent() -> None:
    assert QUICK and LARGE
    for name, spec in zoo.MODELS.items():
        assert isinstance(spec, zoo.ModelSpec)
        assert spec.name == name
        assert isinstance(spec.tags, frozenset) and spec.tags <= KNOWN_TAGS, spec.tags - KNOWN_TAGS
        assert spec.description
        # usable as "models.zoo:NAME"
        module_name, attr = f"models.zoo:{name}".split(":")
        assert getattr(importlib.import_module(module_name), attr) is spec.build
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]  # frozen


def test_required_coverage() -> None:
    tags = set().union(*(zoo.MODELS[n].tags for n in QUICK))
    assert {"cnn", "residual", "depthwise", "attention", "hf", "gqa", "tied", "k_not_div_4", "real"} <= tags
    assert set(LARGE) == {"resnet50", "bert_base", "bert_large"}


def test_get_unknown_lists_names() -> None:
    assert zoo.get("mlp") is zoo.MODELS["mlp"]
    with pytest.raises(KeyError, match="known models: mlp, conv_bn"):
        zoo.get("nope")


def test_build_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    zoo.build("mlp")
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- every quick model


@pytest.mark.parametrize("name", QUICK)
def test_build_is_deterministic(name: str) -> None:
    model_a, inputs_a = zoo.build(name)
    model_b, inputs_b = zoo.build(name)
    assert isinstance(inputs_a, tuple) and inputs_a
    assert not model_a.training
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    for x, y in zip(inputs_a, inputs_b, strict=True):
        assert torch.equal(x, y)
    out_a, out_b = _leaves(_run(model_a, inputs_a)), _leaves(_run(model_b, inputs_b))
    assert out_a and len(out_a) == len(out_b)
    for x, y in zip(out_a, out_b):
        assert torch.equal(x, y)
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", QUICK)
def test_exports_and_matches_eager(name: str) -> None:
    model, inputs = zoo.build(name)
    ep = torch.export.export(model, inputs, strict=False)
    with torch.no_grad():
        assert_close(_run(model, inputs), ep.module()(*inputs), name=name)
    targets = _aten_targets(ep)
    tags = zoo.MODELS[name].tags
    if "attention" in tags:
        assert any("softmax" in t or "scaled_dot_product" in t for t in targets), targets
    if "residual" in tags:
        assert "aten.add.Tensor" in targets or "aten.add_.Tensor" in targets
    if "functional" in tags:
        assert "aten.addmm.default" in targets
        assert targets & {"aten.matmul.default", "aten.mm.default"}


# --------------------------------------------------------------------------- tags mean what they say


@pytest.mark.parametrize("name", QUICK)
def test_structural_tags(name: str) -> None:
    tags = zoo.MODELS[name].tags
    model, _ = zoo.build(name)
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    assert bool(_shared_parameters(model)) == ("tied" in tags)
    assert any(k % 4 for k in _linear_in_features(model)) == ("k_not_div_4" in tags)
    assert any(m.groups > 1 and m.groups == m.in_channels for m in convs) == ("depthwise" in tags)
    assert any(1 < m.groups < m.in_channels for m in convs) == ("grouped" in tags)
    assert any(m.transposed for m in convs) == ("transposed" in tags)
    if "cnn" in tags:  # vision transformers have a patch-embedding conv too, so only one direction
        assert convs

    from transformers import PreTrainedModel
    from transformers.pytorch_utils import Conv1D

    assert isinstance(model, PreTrainedModel) == ("hf" in tags)
    assert any(isinstance(m, Conv1D) for m in model.modules()) == ("conv1d" in tags)
    config = getattr(model, "config", None)
    is_gqa = config is not None and getattr(config, "num_key_value_heads", None) not in (
        None,
        getattr(config, "num_attention_heads", None),
    )
    assert is_gqa == ("gqa" in tags)


def test_tied_models_share_one_parameter_object() -> None:
    model, _ = zoo.build("tied_weights")
    assert model.head.weight is model.embed.weight
    lm, _ = zoo.build("hf_gpt2_lm")
    assert lm.lm_head.weight is lm.transformer.wte.weight


def test_hf_gpt2_uses_transformers_conv1d() -> None:
    from transformers import GPT2Model
    from transformers.pytorch_utils import Conv1D

    model, (ids, mask) = zoo.build("hf_gpt2")
    assert isinstance(model, GPT2Model)
    c_attn = model.h[0].attn.c_attn
    assert isinstance(c_attn, Conv1D) and tuple(c_attn.weight.shape) == (64, 192)  # [in, out]
    # positional (input_ids, attention_mask) means what it says: the padded row changes with the mask
    with torch.no_grad():
        masked = model(ids, mask).last_hidden_state
        unmasked = model(ids, torch.ones_like(mask)).last_hidden_state
    assert torch.equal(masked[0], unmasked[0]) and not torch.equal(masked[1], unmasked[1])


def test_hf_llama_is_gqa() -> None:
    model, _ = zoo.build("hf_llama")
    attn = model.layers[0].self_attn
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == 2
    assert attn.k_proj.out_features * 2 == attn.q_proj.out_features


def test_minilm_is_real_and_tokenized() -> None:
    model, (ids, mask) = zoo.build("minilm")
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert ids.shape == mask.shape == (2, 32) and ids.dtype == torch.long
    assert (ids[:, 0] == 101).all()  # [CLS]
    assert (mask.sum(dim=1) < 32).all(), "sentences should be padded to the fixed length"
    _, (ids16, _) = zoo.minilm(seq_len=16)
    assert ids16.shape == (2, 16)
    # pretrained, not random: the embedding of a similar sentence is closer than that of an unrelated one
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(zoo.minilm_dir(), local_files_only=True)
    batch = tok(
        ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Interest rates rose sharply this quarter."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    emb = (hidden * batch["attention_mask"][..., None]).sum(1) / batch["attention_mask"].sum(1, keepdim=True)
    emb = torch.nn.functional.normalize(emb, dim=1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


# --------------------------------------------------------------------------- models/text.py


def test_sentences_deterministic_and_bounded() -> None:
    a = text.sentences(20, seed=3, min_words=8, max_words=20)
    assert a == text.sentences(20, seed=3, min_words=8, max_words=20)
    assert a != text.sentences(20, seed=4, min_words=8, max_words=20)
    assert len(set(a)) == 20
    for s in a:
        assert 8 <= len(s.split()) <= 20
        assert s[0].isupper() and s.endswith(".")
        assert not any(c in s for c in "{}[]=_`>")


def test_sentence_splits_are_disjoint_and_large_enough() -> None:
    calib = text.sentences(512, split="calib")
    evaluation = text.sentences(128, split="eval")
    assert not set(calib) & set(evaluation)
    assert set(calib) | set(evaluation) <= set(text.sentences(len(text._pool()), min_words=1, max_words=10_000))


def test_sentences_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        text.sentences(1, split="train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only"):
        text.sentences(10**6)
    with pytest.raises(ValueError, match="min_words"):
        text.sentences(1, min_words=10, max_words=5)
