"""Property fuzz of the command line (issue 9): random verbs, options, option values and config JSON.

Whatever the arguments, ``graphprune`` ends with an exit code from the documented set and at most one
error line (never a traceback), the input file's bytes do not change, an existing output folder is
unchanged when the run fails, and no payload from a model file runs. In process, a fixed number of
derandomized examples; the models are ones that load or fail fast (no full compile per example).
"""

import contextlib
import io
import json
import string

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from graphprune.cli import main
from graphprune.config import OP_TYPES, CompileConfig
from graphprune.errors import EXIT_CODES
from tests.io.hostile_files import hostile_pt2
from tests.io.test_staging import snapshot

FIELDS = sorted(f for f in CompileConfig.__dataclass_fields__)
TEXT = st.text(alphabet=string.ascii_letters + string.digits + ":,.@=*/_-x ", max_size=24)
PATTERN_TEXT = st.one_of(
    st.sampled_from(["2:4", "4:8", "1:4", "3:2", "0:4", "unstructured:0.8", "unstructured:0.8@global",
                     "unstructured:1.5", "channels:0.5", "heads:0.25,ffn:0.5", "hidden:0.25", "2:4@2d_greedy",
                     "unstructured:0.5@random@seed=3", "banana", "", ",", "2:4,2:4", "heads:-1"]),
    TEXT,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | TEXT | PATTERN_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["type", "n", "m", "ratio", "*.fc"]), inner, max_size=3),
    max_leaves=8,
)
VALID_CONFIGS = st.fixed_dictionaries({}, optional={
    "pattern": st.sampled_from(["2:4", "unstructured:0.5@global", ["4:8"], {"type": "Unstructured", "sparsity": 0.3}]),
    "include": st.sampled_from(["0*", ["*"], []]),
    "overrides": st.sampled_from([{}, {"2*": "dense"}, {"0*": "4:8"}]),
    "permute": st.booleans(),
    "validate": st.booleans(),
    "opset": st.sampled_from([None, 18]),
})
CONFIGS = st.one_of(
    VALID_CONFIGS,
    st.dictionaries(st.sampled_from([*FIELDS, "colour"]), JSON_VALUES, max_size=4),
    JSON_VALUES,
)


@st.composite
def argvs(draw):
    verb = draw(st.sampled_from(["compile", "inspect", "bench", "audit", "frobnicate"]))
    model = draw(st.sampled_from(["MODEL_FILE", "HOSTILE_FILE", "GARBAGE_FILE", "tests.hostile:raises",
                                  "tests.factories:tiny_mlp", "MISSING", "FOLDER"]))
    if verb == "inspect" and draw(st.booleans()):
        model = "tests.factories:tiny_mlp"  # one that runs to the end
    if model == "tests.factories:tiny_mlp" and verb != "inspect":
        model = "tests.hostile:nan_bias"  # a full compile per example would be too slow: fail in validation
    argv = [verb, model]
    options = draw(st.lists(st.sampled_from([
        "--pattern", "--input-shape", "--include", "--exclude", "--op-type", "--override", "--config", "-o",
        "--trust-pickle", "--form", "--permute-budget", "--dump-dir", "--max-rows", "--runtime", "--json", "--bogus",
    ]), max_size=3))
    for opt in options:
        argv.append(opt)
        if opt in ("--trust-pickle", "--json"):
            continue
        value = {
            "--pattern": PATTERN_TEXT,
            "--input-shape": st.sampled_from(["4,16", "2x16:int64:30", "4,16:int64:0", "0,3", "4,16:cplx", "9" * 12]) | TEXT,
            "--op-type": st.sampled_from([*OP_TYPES, "lstm"]),
            "--override": st.sampled_from(["*=dense", "*.fc=4:8", "=2:4", "*=heads:0.5", "nope"]) | TEXT,
            "--config": st.just("CONFIG_FILE"),
            "-o": st.sampled_from(["OUT", "", "MODEL_FILE", "NEW_OUT", "GARBAGE_FILE"]),
            "--form": st.sampled_from(["folded", "masked", "zipped"]),
            "--dump-dir": st.sampled_from(["GARBAGE_FILE", "NEW_DUMP"]),
            "--runtime": st.sampled_from(["torch", "ort", "tpu"]),
        }.get(opt, TEXT)
        argv.append(draw(value))
    return argv


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    marker = root / "marker"
    paths = {
        "MODEL_FILE": hostile_pt2(root, "injected_parameter_name", marker),
        "HOSTILE_FILE": hostile_pt2(root, "sample_inputs_pickle", marker),
        "GARBAGE_FILE": root / "garbage.pt2",
        "OUT": root / "out",
        "NEW_OUT": root / "new" / "out",
        "NEW_DUMP": root / "dump",
        "CONFIG_FILE": root / "config.json",
        "MISSING": root / "missing.pt2",
        "FOLDER": root,
    }
    paths["GARBAGE_FILE"].write_bytes(b"\x00not a model" * 20)
    paths["OUT"].mkdir()
    for name in ("model.onnx", "pruned.pt2", "report.json"):
        (paths["OUT"] / name).write_text(f"an earlier run's {name}")
    return root, marker, paths


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=argvs(), config=CONFIGS)
def test_any_command_line_ends_in_a_documented_exit_code(files, argv, config):
    root, marker, paths = files
    paths["CONFIG_FILE"].write_text(json.dumps(config))
    argv = [str(paths.get(a, a)) for a in argv]
    inputs = {k: paths[k].read_bytes() for k in ("MODEL_FILE", "HOSTILE_FILE", "GARBAGE_FILE")}
    before = snapshot(paths["OUT"])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    event(f"exit {rc}")
    text = err.getvalue()
    assert rc in EXIT_CODES, (argv, rc, text)
    assert "Traceback" not in text and "Traceback" not in out.getvalue(), (argv, text)
    assert rc == 0 or sum(": error: " in ln for ln in text.splitlines()) == 1, (argv, text)
    assert {k: paths[k].read_bytes() for k in inputs} == inputs
    assert not marker.exists()
    if rc != 0:
        after = snapshot(paths["OUT"])
        assert {k: v for k, v in after.items() if k != "report.failed.json"} == before, argv
        assert not paths["NEW_OUT"].parent.exists() or any(paths["NEW_OUT"].parent.iterdir())
    assert not [p for p in root.rglob("*") if "graphprune-stage" in p.name]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(config=CONFIGS)
def test_any_config_is_accepted_or_refused_with_config_error(config):
    from graphprune.errors import ConfigError

    try:
        cfg = CompileConfig.from_dict(config) if isinstance(config, dict) else None
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    if cfg is not None:
        assert CompileConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
