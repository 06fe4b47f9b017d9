"""runtime/hf.py: example inputs bound to the forward, KV caches off, encoder-decoder inputs (no export here)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphprune.errors import InputError
from graphprune.runtime.hf import disable_cache, prepare_inputs, split_example


class CacheSecond(nn.Module):
    """GPT-2's forward order: the cache comes between input_ids and attention_mask."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)

    def forward(self, input_ids, cache=None, attention_mask=None, scale=1.0):
        h = self.emb(input_ids) * scale
        return h if attention_mask is None else h * attention_mask[..., None]


class KeywordOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, *, x, y=None):
        return self.fc(x) if y is None else self.fc(x) + y


def test_split_example_kinds():
    t = torch.zeros(1)
    assert split_example(t) == ((t,), {})
    assert split_example([t, t])[0] == (t, t)
    assert split_example({"a": t}) == ((), {"a": t})
    assert split_example(((t,), {"b": t})) == ((t,), {"b": t})
    with pytest.raises(InputError, match="got int"):
        split_example(3)


def test_named_inputs_are_bound_to_their_positions_with_defaults_between():
    model = CacheSecond()
    ids, mask = torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1, 0]])
    prep = prepare_inputs(model, {"input_ids": ids, "attention_mask": mask})
    assert prep.args[0] is ids and prep.args[1] is None and prep.args[2] is mask
    assert prep.names == ["input_ids", "cache", "attention_mask"] and prep.tensor_names == ["input_ids", "attention_mask"]
    # calling with the bound tuple is the keyword call
    assert torch.equal(model(*prep.args), model(input_ids=ids, attention_mask=mask))
    assert not hasattr(model, "_graphprune_input_names")  # no adapter needed


def test_input_names_option_names_positional_inputs():
    model = CacheSecond()
    ids, mask = torch.tensor([[1, 2]]), torch.tensor([[1, 0]])
    prep = prepare_inputs(model, (ids, mask), input_names=["input_ids", "attention_mask"])
    assert prep.args[2] is mask  # without the names, mask would have gone to `cache`
    with pytest.raises(InputError, match="2 input names given .* for 1 positional"):
        prepare_inputs(model, (ids,), input_names=["input_ids", "attention_mask"])


def test_keyword_only_forward_gets_a_positional_adapter():
    torch.manual_seed(0)
    model = KeywordOnly()
    x, y = torch.randn(2, 4), torch.randn(2, 4)
    expected = model(x=x, y=y)
    prep = prepare_inputs(model, {"x": x, "y": y})
    assert prep.args == (x, y) and prep.names == ["x", "y"]
    assert torch.equal(model(*prep.args), expected)
    assert any("by keyword only" in n for n in prep.notes) and prep.record["keyword_adapter"] == ["x", "y"]
    assert [n for n, _ in model.named_parameters()] == ["fc.weight", "fc.bias"]  # structure unchanged
    import copy

    clone = copy.deepcopy(model)  # the adapter follows the copy, bound to it
    assert torch.equal(clone(x, y), expected) and clone.forward.__self__ is clone


def test_bad_names_are_one_line_errors():
    model = CacheSecond()
    with pytest.raises(InputError, match="has no input named 'input_id'; it takes input_ids, cache"):
        prepare_inputs(model, {"input_id": torch.tensor([[1]])})
    with pytest.raises(InputError, match="needs input 'input_ids' \\(no default\\)"):
        prepare_inputs(model, {"attention_mask": torch.tensor([[1]])})
    with pytest.raises(InputError, match="given both by position and by name"):
        prepare_inputs(model, ((torch.tensor([[1]]),), {"input_ids": torch.tensor([[1]])}))


def test_disable_cache_turns_off_every_config_of_the_copy():
    from transformers import GPT2Config

    model = CacheSecond()
    model.config = GPT2Config(n_layer=1)
    model.emb.config = GPT2Config(n_layer=1)  # a sub-module with its own (deep-copied) config, as T5's stacks
    assert model.config.use_cache and model.emb.config.use_cache
    assert disable_cache(model) == ["GPT2Config", "GPT2Config"]
    assert not model.config.use_cache and not model.emb.config.use_cache
    prep = prepare_inputs(model, {"input_ids": torch.tensor([[1]])})
    assert prep.record == {"names": ["input_ids"]}  # nothing left to turn off
    model.config.use_cache = True
    prep = prepare_inputs(model, {"input_ids": torch.tensor([[1]])})
    assert prep.record["cache"] == "off (config.use_cache was True)" and "use_cache turned off" in prep.notes[0]


class EncDec(nn.Module):
    def __init__(self, start):
        super().__init__()
        from transformers import PretrainedConfig

        self.config = PretrainedConfig(is_encoder_decoder=True, decoder_start_token_id=start)
        self.emb = nn.Embedding(10, 4)

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None):
        return self.emb(input_ids).sum(1, keepdim=True) + self.emb(decoder_input_ids)


def test_encoder_decoder_gets_decoder_inputs_or_a_one_line_error():
    ids = torch.tensor([[5, 6, 7], [8, 9, 1]])
    prep = prepare_inputs(EncDec(start=0), {"input_ids": ids})
    assert torch.equal(prep.args[2], torch.tensor([[0, 5, 6], [0, 8, 9]]))  # shifted right, start token first
    assert prep.tensor_names == ["input_ids", "decoder_input_ids"]
    assert "decoder_input_ids [2, 3] built from input_ids shifted right with start token 0 from decoder_start_token_id" in prep.notes[0]
    given = torch.tensor([[1], [2]])
    assert prepare_inputs(EncDec(start=0), {"input_ids": ids, "decoder_input_ids": given}).args[2] is given
    with pytest.raises(InputError, match="EncDec is an encoder-decoder and its forward needs decoder_input_ids: pass them"):
        prepare_inputs(EncDec(start=None), {"input_ids": ids})
