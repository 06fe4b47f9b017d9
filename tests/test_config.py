import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphprune.config import (
    FFN,
    Channels,
    CompileConfig,
    Heads,
    Hidden,
    SemiStructured,
    Unstructured,
    as_config,
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


# ---- issue 9: one type check at the boundary; pattern strings round-trip -------------------------
_ratios = st.floats(min_value=0, max_value=1, exclude_max=True, allow_nan=False)
_importance = st.sampled_from(["l1", "l2", "taylor"])


def _semi(m: int):
    methods = st.sampled_from(["1d", "2d_greedy", "2d_best"]) if m <= 8 else st.just("1d")
    return st.builds(SemiStructured, n=st.integers(1, m - 1), m=st.just(m), method=methods)


PATTERNS = st.one_of(
    st.builds(Unstructured, sparsity=_ratios, scope=st.sampled_from(["layer", "global"]),
              method=st.sampled_from(["magnitude", "random"]), seed=st.integers(-(2**40), 2**40)),
    st.integers(2, 32).flatmap(_semi),
    st.builds(Channels, ratio=_ratios, importance=st.sampled_from(["l1", "l2", "taylor", "bn_scale", "activation"]),
              scope=st.sampled_from(["layer", "global"]), round_to=st.integers(1, 128)),
    st.builds(Heads, ratio=_ratios, importance=_importance, min_heads=st.integers(1, 64)),
    st.builds(FFN, ratio=_ratios, importance=_importance, round_to=st.integers(1, 128)),
    st.builds(Hidden, ratio=_ratios, importance=_importance, round_to=st.integers(1, 128)),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(PATTERNS)
def test_pattern_string_round_trips(p):
    assert parse_pattern(str(p)) == (p,)
    assert CompileConfig.from_dict(json.loads(json.dumps(CompileConfig(pattern=(p,)).to_dict()))).pattern == (p,)


@pytest.mark.parametrize(
    "p, text",
    [
        (Unstructured(sparsity=0.8, scope="global"), "unstructured:0.8@global"),
        (Unstructured(sparsity=0.5, method="random", seed=3), "unstructured:0.5@random@seed=3"),
        (SemiStructured(n=2, m=4, method="2d_best"), "2:4@2d_best"),
        (Channels(ratio=0.5, importance="l2", round_to=4), "channels:0.5@l2@round_to=4"),
        (Heads(ratio=0.25, min_heads=2), "heads:0.25@min_heads=2"),
        (SemiStructured(), "2:4"),
    ],
)
def test_pattern_strings_write_non_default_fields_as_options(p, text):
    assert str(p) == text


@pytest.mark.parametrize("text, fragment", [
    ("unstructured:0.5@sideways", "not one of"),
    ("unstructured:0.5@seed=x", "must be an integer"),
    ("heads:0.5@round_to=4", "has no option 'round_to'"),
    ("unstructured:0.5@global@global", "given twice"),
    ("unstructured:nan", "not a finite number"),
])
def test_bad_pattern_options(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_pattern(text)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"include": 5}, "CompileConfig.include must be a string or a list of strings, got 5"),
        ({"exclude": [1]}, "CompileConfig.exclude"),
        ({"pattern": 5}, "CompileConfig.pattern: 5 (int) is not a pattern"),
        ({"pattern": []}, "CompileConfig.pattern is empty"),
        ({"overrides": ["a", "b"]}, "CompileConfig.overrides must be an object"),
        ({"permute": "no"}, "CompileConfig.permute must be true or false"),
        ({"validate": 1}, "CompileConfig.validate must be true or false"),
        ({"opset": 7}, "supported range 18.."),
        ({"opset": True}, "CompileConfig.opset must be an int"),
        ({"permute_budget_s": float("inf")}, "permute_budget_s"),
        ({"pattern": {"type": "Heads", "ratio": 2}}, "Heads.ratio"),
    ],
)
def test_config_types_are_checked_at_the_api_boundary(kwargs, fragment):
    with pytest.raises(ConfigError) as ei:
        CompileConfig(**kwargs)
    assert fragment in str(ei.value).replace(" (fqn globs / op kinds)", "")
    with pytest.raises(ConfigError):
        CompileConfig.from_dict(kwargs)


def test_config_accepts_what_the_cli_accepts():
    assert CompileConfig(pattern="2:4") == CompileConfig()
    assert CompileConfig(pattern="heads:0.25,2:4").pattern == (Heads(ratio=0.25), SemiStructured())
    assert CompileConfig(pattern={"type": "Unstructured", "sparsity": 0.5}).pattern == (Unstructured(sparsity=0.5),)
    assert CompileConfig(pattern=["heads:0.5", {"type": "FFN", "ratio": 0.5}]).pattern == (Heads(ratio=0.5), FFN(ratio=0.5))
    cfg = CompileConfig(include="enc.*", overrides={"*lm_head*": "dense", "*.fc1": "4:8"})
    assert cfg.include == ("enc.*",) and cfg.overrides == {"*lm_head*": None, "*.fc1": SemiStructured(n=4, m=8)}
    assert as_config({"pattern": "2:4"}) == CompileConfig() and as_config(None) == CompileConfig()
    with pytest.raises(ConfigError, match="config must be a CompileConfig"):
        as_config("2:4")
