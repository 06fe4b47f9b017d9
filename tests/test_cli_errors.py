"""Every error path of the command line is one line on stderr and a documented exit code, never a
traceback (issue 9). Runs ``graphprune.cli.main`` in process; each case names what it checks."""

import errno
import json
import sys

import pytest

import graphprune.io.loaders as loaders
from graphprune.cli import main
from graphprune.errors import EXIT_CODES


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert rc in EXIT_CODES, (rc, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    error_lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert rc == 0 or len(error_lines) == 1, err
    return rc, (error_lines[0] if error_lines else ""), out


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"pattern": 5}, "CompileConfig.pattern: 5 (int) is not a pattern"),
        ({"include": 5}, "CompileConfig.include must be a string or a list of strings"),
        ({"overrides": ["a", "b"]}, "CompileConfig.overrides must be an object"),
        ({"permute": "no"}, "CompileConfig.permute must be true or false (a bool), got 'no'"),
        ({"validate": "no"}, "CompileConfig.validate must be true or false (a bool), got 'no'"),
        ({"opset": 7}, "opset 7 is outside the supported range 18.."),
        ({"opset": "banana"}, "CompileConfig.opset must be an int"),
        ({"overrides": {"*": "heads:0.5"}}, "must be one element-wise pattern"),
        ({"pattern": "2:4", "colour": "red"}, "unknown CompileConfig field(s) ['colour']"),
        ([1, 2], "must hold a JSON object"),
    ],
)
def test_config_types_are_checked_exit_2(tmp_path, capsys, config, fragment):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    rc, err, _ = run(capsys, "compile", "tests.factories:tiny_mlp", "--config", str(path), "-o", str(tmp_path / "o"))
    assert rc == 2 and fragment in err
    assert not (tmp_path / "o").exists()


def test_config_that_is_a_directory_or_binary_exit_2(tmp_path, capsys):
    rc, err, _ = run(capsys, "inspect", "tests.factories:tiny_mlp", "--config", str(tmp_path))
    assert rc == 2 and "is a directory" in err
    binary = tmp_path / "c.json"
    binary.write_bytes(bytes(range(256)) * 4)
    rc, err, _ = run(capsys, "inspect", "tests.factories:tiny_mlp", "--config", str(binary))
    assert rc == 2 and "not text" in err


@pytest.mark.parametrize(
    "shape, fragment",
    [
        ("4,16:complex", "dtype 'complex' is not one of"),
        ("4,16:int64:0", "HIGH is the exclusive upper bound of the values, must be >= 1, got 0"),
        ("4,16:int64:-5", "must be >= 1, got -5"),
        ("4,16:float32:7", "HIGH applies to integer dtypes only"),
        ("100000,100000,100000", "more than the memory available"),
        ("4,,16", "the shape must be integers"),
        ("4:int64:3:9", "expected SHAPE[:DTYPE[:HIGH]]"),
    ],
)
def test_bad_input_shape_exit_2(capsys, shape, fragment):
    rc, err, _ = run(capsys, "inspect", "tests.factories:tiny_mlp", "--input-shape", shape)
    assert rc == 2 and fragment in err


@pytest.mark.parametrize(
    "factory, fragment",
    [
        ("tests.hostile:raises", "factory tests.hostile:raises raised RuntimeError: the factory's own bug"),
        ("tests.hostile:exits", "called sys.exit(0) instead of returning"),
        ("syntax_bad:build", "importing 'syntax_bad' failed: SyntaxError"),
        ("import_raises:build", "importing 'import_raises' failed: ValueError: boom at import"),
        ("no_such_module_anywhere:build", "cannot import module 'no_such_module_anywhere'"),
    ],
)
def test_factory_failures_exit_3_naming_the_factory(tmp_path, capsys, monkeypatch, factory, fragment):
    (tmp_path / "syntax_bad.py").write_text("def build(:\n")
    (tmp_path / "import_raises.py").write_text("raise ValueError('boom at import')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    rc, err, _ = run(capsys, "compile", factory, "-o", str(tmp_path / "o"))
    assert rc == 3 and fragment in err
    assert not (tmp_path / "o").exists()  # nothing written, not even an empty folder


def test_factory_folder_is_searched_last(tmp_path, monkeypatch):
    """A local file named like a dependency must not shadow the installed one."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "site").mkdir()
    (tmp_path / "cwd" / "facmod.py").write_text(
        "import torch, gp_dep\ndef build():\n    return torch.nn.Linear(4, 4), (torch.randn(2, 4),)\n"
    )
    (tmp_path / "cwd" / "gp_dep.py").write_text("raise ImportError('the local impostor was imported')\n")
    (tmp_path / "site" / "gp_dep.py").write_text("")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path / "cwd"))] + [str(tmp_path / "site")])
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    loaded = loaders.load_model("facmod:build")
    assert loaded.kind == "factory"
    assert sys.path.index(str(tmp_path / "cwd")) > sys.path.index(str(tmp_path / "site"))


@pytest.mark.parametrize(
    "factory, code, fragments",
    [
        ("tests.hostile:nan_bias", 5, ["weight '2.bias'", "1 NaN"]),
        ("tests.hostile:inf_weight", 5, ["weight '0.weight'", "1 Inf"]),
        ("tests.hostile:overflow", 5, ["output 0", "layer 0 (Linear)", "overflow"]),
        ("tests.hostile:complex_output", 4, ["output 0 is complex"]),
        ("tests.hostile:float_output", 4, ["returns float, no tensor"]),
    ],
)
def test_models_that_cannot_be_validated_fail_before_pruning(tmp_path, capsys, factory, code, fragments):
    rc, err, _ = run(capsys, "compile", factory, "-o", str(tmp_path / "o"))
    assert rc == code and all(f in err for f in fragments), err
    assert not (tmp_path / "o").exists()


def test_bf16_model_compiles_with_parity_on_a_float32_copy(tmp_path, capsys):
    """onnxruntime CPU cannot run bf16 MatMul: parity runs on a float32 copy of the bf16 ONNX and says so."""
    import onnx

    rc, err, out = run(capsys, "compile", "tests.hostile:bf16", "-o", str(tmp_path / "o"))
    assert rc == 0 and "parity:  OK" in out, err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert "float32 copy of the bfloat16 ONNX" in rep["parity"]["how"]
    graph = onnx.load(str(tmp_path / "o" / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16  # the ONNX keeps the model's dtype


def test_data_dependent_branch_is_one_line_naming_the_source(tmp_path, capsys):
    rc, err, _ = run(capsys, "compile", "tests.hostile:data_dependent_if", "-o", str(tmp_path / "o"))
    assert rc == 4 and "branches on tensor values at" in err and "hostile.py" in err and "torch.cond" in err
    assert "class GraphModule" not in err


def test_zero_size_weight_compiles(tmp_path, capsys):
    rc, _, out = run(capsys, "compile", "tests.hostile:zero_size_weight", "-o", str(tmp_path / "o"))
    assert rc == 0 and "parity:  OK" in out


def test_onnx_input_refuses_structured_patterns_in_compile_and_inspect(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(__import__("numpy").ones((8, 8), "float32"), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    for verb in (["compile", "-o", str(tmp_path / "o")], ["inspect"]):
        rc, err, _ = run(capsys, verb[0], str(path), "--pattern", "channels:0.5", *verb[1:])
        assert rc == 2 and "structured pattern(s) channels:0.5 need a PyTorch model" in err


def test_options_exit_2_and_version(tmp_path, capsys):
    rc, err, _ = run(capsys, "compile", "tests.factories:tiny_mlp", "-o", "")
    assert rc == 2 and "-o/--output" in err and not list(tmp_path.iterdir())
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip().startswith("graphprune 0.")
    assert main(["compile"]) == 2  # argparse usage error: returned, not raised
    capsys.readouterr()


def test_dump_dir_that_is_a_file_exit_7(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep")
    rc, err, _ = run(capsys, "compile", "tests.factories:tiny_mlp", "--dump-dir", str(f), "-o", str(tmp_path / "o"))
    assert rc == 7 and "--dump-dir" in err and f.read_text() == "keep"


@pytest.mark.parametrize(
    "exc, code, fragment",
    [
        (ValueError("an unexpected bug"), 8, "internal error: ValueError: an unexpected bug; please report it"),
        (MemoryError(), 8, "out of memory"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), 8, "out of memory"),
        (OSError(errno.ENOSPC, "No space left on device", "/x/report.json"), 7, "cannot write /x/report.json"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (SystemExit(0), 8, "sys.exit(0)"),
    ],
)
def test_one_handler_maps_every_exception(tmp_path, capsys, monkeypatch, exc, code, fragment):
    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(loaders, "load_model", boom)
    rc, err, _ = run(capsys, "compile", "tests.factories:tiny_mlp", "-o", str(tmp_path / "o"))
    assert rc == code and fragment in err
    assert not (tmp_path / "o").exists()


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    def boom(*a, **k):
        raise ValueError("an unexpected bug")

    monkeypatch.setattr(loaders, "load_model", boom)
    assert main(["--debug", "inspect", "tests.factories:tiny_mlp"]) == 8
    assert "Traceback" in capsys.readouterr().err
    assert main(["inspect", "--debug", "tests.factories:tiny_mlp"]) == 8
    assert "Traceback" in capsys.readouterr().err


def test_exit_codes_are_the_documented_set():
    assert set(EXIT_CODES) == {0, 2, 3, 4, 5, 6, 7, 8, 9, 130, 143}
