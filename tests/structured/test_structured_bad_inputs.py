"""Bad input: ratios outside [0, 1), layers left with nothing, unsliceable groups, folded shape constants."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from graphprune.config import FFN, Channels, Heads
from graphprune.errors import ConfigError, ValidationError, WeightError
from graphprune.report import SkipReason
from graphprune.structured import prune_structured
from graphprune.structured.iterative import prune_structured_iteratively
from tests.structured._helpers import HardcodedHeads, grouped_net, lopsided_mlp, n_params, prune_copy, torch_parity


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, float("nan")])
def test_ratio_outside_unit_interval_is_a_config_error(ratio):
    with pytest.raises(ConfigError, match="ratio"):
        Channels(ratio=ratio)
    # and the entry point checks again (a pattern built around the dataclass validation)
    bad = Heads(ratio=0.5)
    object.__setattr__(bad, "ratio", ratio)
    model, inputs = lopsided_mlp()
    with pytest.raises(ConfigError, match=r"Heads\.ratio"):
        prune_structured(model, inputs, [bad])


def test_not_a_pattern_is_a_config_error():
    model, inputs = lopsided_mlp()
    with pytest.raises(ConfigError, match="Channels, Heads, FFN or Hidden"):
        prune_structured(model, inputs, ["channels:0.5"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="twice"):
        prune_structured(model, inputs, [FFN(ratio=0.1), FFN(ratio=0.2)])


def test_zero_channels_left_is_refused_with_the_layer_named():
    model, inputs = lopsided_mlp()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightError, match="layer fc1 with zero channels"):
        prune_structured(model, inputs, [Channels(ratio=0.75, scope="global", round_to=1)])
    # refused before any change
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


def test_unsliceable_group_reported_while_the_rest_is_pruned():
    model, inputs = grouped_net()
    original, shrunk, result = prune_copy(model, inputs, [Channels(ratio=0.5)])
    dense = [d for d in result.decisions if d.reason == SkipReason.UNSLICEABLE_GROUP]
    assert {d.module for d in dense} >= {"c1", "g"}
    c1 = next(d for d in dense if d.module == "c1")
    assert "grouped convolution (groups=4)" in c1.message and "node conv2d_1" in c1.message
    assert shrunk.c1.out_channels == 16 and shrunk.g.out_channels == 16
    assert shrunk.c2.out_channels == 8 and shrunk.c3.in_channels == 8
    assert torch_parity(shrunk, result.masked_equivalent(original), inputs).ok


def test_folded_head_count_is_caught_by_the_parity_check():
    torch.manual_seed(0)
    model, inputs = HardcodedHeads().eval(), (torch.randn(2, 5, 64),)
    with pytest.raises(ValidationError, match=r"reshape nodes .*view"):
        prune_structured(model, inputs, [Heads(ratio=0.5)])


def test_verify_can_be_skipped_for_speed():
    model, inputs = lopsided_mlp()
    result = prune_structured(model, inputs, [Channels(ratio=0.5, round_to=1)], verify=False)
    assert result.parity is None and any(g.pruned for g in result.groups)


def test_iterative_ratios_are_of_the_original_size():
    from models import zoo

    model, inputs = zoo.build("residual_cnn")
    seen: list[tuple[int, int]] = []
    res = prune_structured_iteratively(
        model,
        inputs,
        [0.25, 0.5],
        lambda r: [Channels(ratio=r, round_to=1)],
        between_steps=lambda i, m: seen.append((i, m.layer2.conv1.out_channels)),
    )
    assert seen == [(0, 24), (1, 16)]
    assert [s.layer2.conv1.out_channels for s in res.snapshots] == [24, 16]
    assert res.snapshots[0] is not res.model and n_params(res.snapshots[0]) > n_params(res.model)
    assert len(res.steps) == 2 and all(s.parity and s.parity["ok"] for s in res.steps)
    with pytest.raises(ConfigError, match="increase"):
        prune_structured_iteratively(model, inputs, [0.5, 0.25], lambda r: [Channels(ratio=r)])


def test_heads_min_heads_respected():
    from models import zoo

    model, inputs = zoo.build("hf_bert")
    _, shrunk, _ = prune_copy(model, inputs, [Heads(ratio=0.9, min_heads=3)])
    assert shrunk.encoder.layer[0].attention.self.num_attention_heads == 3


def test_configs_are_frozen_dataclasses():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Channels(ratio=0.5).ratio = 0.7  # type: ignore[misc]
