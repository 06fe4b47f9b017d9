import json

import pytest

from graphprune.config import (
    FFN,
    Channels,
    CompileConfig,
    Heads,
    SemiStructured,
    Unstructured,
    parse_pattern,
)
from graphprune.errors import ConfigError


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2:4", (SemiStructured(n=2, m=4),)),
        ("4:8", (SemiStructured(n=4, m=8),)),
        ("1:4", (SemiStructured(n=1, m=4),)),
        ("2:4/2d_greedy", (SemiStructured(n=2, m=4, method="2d_greedy"),)),
        ("unstructured:0.8", (Unstructured(sparsity=0.8),)),
        ("unstructured:0.5@global", (Unstructured(sparsity=0.5, scope="global"),)),
        ("channels:0.5", (Channels(ratio=0.5),)),
        ("heads:0.25,ffn:0.5", (Heads(ratio=0.25), FFN(ratio=0.5))),
        ("heads:0.25, 2:4", (Heads(ratio=0.25), SemiStructured())),
    ],
)
def test_parse_pattern(text, expected):
    assert parse_pattern(text) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("3:2", "0 < N < M"),
        ("0:4", "0 < N < M"),
        ("4:4", "0 < N < M"),
        ("unstructured:1.5", "[0, 1)"),
        ("unstructured:-0.1", "[0, 1)"),
        ("unstructured:abc", "not a number"),
        ("banana", "not understood"),
        ("", "non-empty"),
        ("2:4,unstructured:0.5", "at most one"),
        ("heads:1.0", "[0, 1)"),
        ("channels:0.5,channels:0.2", "twice"),
        ("2:x", "not understood"),
    ],
)
def test_parse_pattern_rejects_bad_strings_with_a_message(text, fragment):
    with pytest.raises(ConfigError) as ei:
        parse_pattern(text)
    assert fragment in str(ei.value)


def test_field_validation_names_the_field():
    with pytest.raises(ConfigError, match=r"Unstructured\.sparsity"):
        Unstructured(sparsity=1.0)
    with pytest.raises(ConfigError, match=r"SemiStructured\.method"):
        SemiStructured(n=2, m=4, method="3d")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"CompileConfig\.form"):
        CompileConfig(form="zipped")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="op_types"):
        CompileConfig(op_types=("lstm",))


def test_config_json_round_trip(tmp_path):
    cfg = CompileConfig(
        pattern=(Heads(ratio=0.25), SemiStructured(n=4, m=8)),
        include=("encoder.*",),
        exclude=("*pooler*",),
        overrides={"*lm_head*": None, "*.fc1": Unstructured(sparsity=0.5)},
        form="masked",
    )
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    again = CompileConfig.from_json(path)
    assert again == cfg
    assert again.pattern_for("x.fc1") == (Unstructured(sparsity=0.5), "*.fc1")
    assert again.pattern_for("model.lm_head") == (None, "*lm_head*")
    assert again.pattern_for("other") == (SemiStructured(n=4, m=8), None)


def test_config_json_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        CompileConfig.from_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        CompileConfig.from_json(bad)
    bad.write_text(json.dumps({"patern": "2:4"}))
    with pytest.raises(ConfigError, match="unknown CompileConfig field"):
        CompileConfig.from_json(bad)
    bad.write_text(json.dumps({"pattern": "2:4", "include": ["a*"]}))
    assert CompileConfig.from_json(bad).include == ("a*",)


def test_selects_include_exclude():
    cfg = CompileConfig(include=("enc.*",), exclude=("*.out",))
    assert cfg.selects("enc.q")
    assert not cfg.selects("enc.out")
    assert not cfg.selects("dec.q")
