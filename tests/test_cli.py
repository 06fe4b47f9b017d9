"""The CLI end to end: outputs, printed report, and one exit code per kind of bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from graphprune.cli import main


def _pt2(path, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    torch.export.save(torch.export.export(model, (torch.randn(2, 16),)), str(path))
    return model


def test_compile_factory_writes_outputs_and_prints_report(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", "tests.factories:tiny_mlp", "--pattern", "2:4", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "parity:  OK" in text and "audit:   OK" in text and "0.weight" in text
    rep = json.loads((out / "report.json").read_text())
    assert rep["counts"] == {"pruned": 2}
    assert rep["parity"]["ok"] and rep["audit"]["ok"]
    assert {"capture", "masks", "rewrite", "export", "audit", "parity"} <= set(rep["timings"])
    assert (out / "model.onnx").stat().st_size > 0 and (out / "pruned.pt2").stat().st_size > 0


def test_compile_pt2_and_reload_output(tmp_path):
    src = tmp_path / "m.pt2"
    _pt2(src)
    before = src.read_bytes()
    out = tmp_path / "o"
    assert main(["compile", str(src), "--pattern", "unstructured:0.5", "-o", str(out)]) == 0
    assert src.read_bytes() == before
    ep = torch.export.load(str(out / "pruned.pt2"))
    w = dict(ep.named_parameters())["0.weight"]
    assert abs(int((w == 0).sum()) - w.numel() // 2) <= 1


def test_compile_torchscript_needs_and_uses_input_shape(tmp_path):
    torch.manual_seed(0)
    src = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))), str(src))
    assert main(["compile", str(src), "-o", str(tmp_path / "o1")]) == 3
    assert main(["compile", str(src), "--input-shape", "2,16", "-o", str(tmp_path / "o2")]) == 0
    rep = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert rep["capture"]["method"] == "walk" and rep["parity"]["ok"]
    assert rep["counts"] == {"pruned": 2} and rep["audit"]["ok"]


@pytest.mark.parametrize("pattern", ["3:2", "0:4", "unstructured:1.5", "banana"])
def test_bad_pattern_exit_2(tmp_path, capsys, pattern):
    assert main(["compile", "tests.factories:tiny_mlp", "--pattern", pattern, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pattern" in err and repr(pattern) in err


def test_bad_inputs_exit_3(tmp_path, capsys):
    assert main(["compile", str(tmp_path / "nope.pt2")]) == 3
    assert "nope.pt2 does not exist" in capsys.readouterr().err
    sd = tmp_path / "sd.pt"
    torch.save(nn.Linear(2, 2).state_dict(), sd)
    assert main(["compile", str(sd), "-o", str(tmp_path / "o")]) == 3
    assert "state_dict" in capsys.readouterr().err
    whole = tmp_path / "whole.pt"
    torch.save(nn.Linear(2, 2), whole)
    assert main(["compile", str(whole), "--input-shape", "1,2", "-o", str(tmp_path / "o")]) == 3
    assert "--trust-pickle" in capsys.readouterr().err
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"garbage")
    assert main(["compile", str(bad_onnx), "-o", str(tmp_path / "o")]) == 3
    assert "bad.onnx" in capsys.readouterr().err


def test_nan_weights_exit_5(tmp_path, capsys):
    assert main(["compile", "tests.factories:nan_model", "-o", str(tmp_path / "o")]) == 5
    assert "fc" in capsys.readouterr().err


def test_output_equal_to_input_is_refused_and_input_kept(tmp_path, capsys):
    src = tmp_path / "model.onnx"
    _pt2(tmp_path / "m.pt2")
    assert main(["compile", str(tmp_path / "m.pt2"), "-o", str(tmp_path / "o")]) == 0
    src.write_bytes((tmp_path / "o" / "model.onnx").read_bytes())
    before = src.read_bytes()
    assert main(["compile", str(src), "-o", str(tmp_path)]) == 7
    assert "overwrite the input" in capsys.readouterr().err
    assert src.read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; permission bits do not stop it")
def test_unwritable_output_exit_7(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert main(["compile", "tests.factories:tiny_mlp", "-o", str(ro / "sub")]) == 7


def test_output_that_is_a_file_exit_7(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep me")
    assert main(["compile", "tests.factories:tiny_mlp", "-o", str(f)]) == 7
    assert f.read_text() == "keep me"


def test_inspect_and_audit(tmp_path, capsys):
    assert main(["inspect", "tests.factories:tiny_mlp", "--json"]) == 0
    decisions = json.loads(capsys.readouterr().out)
    assert [d["param"] for d in decisions] == ["0.weight", "2.weight"]
    out = tmp_path / "o"
    assert main(["compile", "tests.factories:tiny_mlp", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["audit", str(out / "model.onnx"), "--pattern", "2:4"]) == 0
    assert main(["audit", str(out / "model.onnx"), "--pattern", "1:4"]) == 6


def test_inspect_shows_structured_groups_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "models.zoo:residual_cnn", "--pattern", "channels:0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    groups = {g["name"]: g for g in out["structured"]}
    assert groups["layer2.conv1"]["pruned"] and groups["layer2.conv1"]["units_after"] == 16
    assert not groups["fc"]["pruned"] and "model output" in groups["fc"]["message"]
    # element-wise decisions are those of the shrunk model, as compile would see it
    shapes = {d["param"]: tuple(d["shape"]) for d in out["decisions"]}
    assert shapes["layer2.conv1.weight"][0] == 16
    assert main(["inspect", "models.zoo:residual_cnn", "--pattern", "channels:0.5"]) == 0
    text = capsys.readouterr().out
    assert "channels:0.5" in text and "note:    structured:" in text
    assert list(tmp_path.iterdir()) == []


def test_onnx_input_is_pruned_and_checked(tmp_path, capsys):
    _pt2(tmp_path / "m.pt2")
    assert main(["compile", str(tmp_path / "m.pt2"), "--pattern", "unstructured:0", "-o", str(tmp_path / "dense")]) == 0
    dense = tmp_path / "dense" / "model.onnx"
    capsys.readouterr()
    assert main(["compile", str(dense), "--pattern", "2:4", "-o", str(tmp_path / "p")]) == 0
    text = capsys.readouterr().out
    assert "parity:  OK" in text
    assert main(["audit", str(tmp_path / "p" / "model.onnx"), "--pattern", "2:4"]) == 0


def test_console_script_runs():
    exe = os.path.join(os.path.dirname(sys.executable), "graphprune")
    r = subprocess.run([exe, "compile", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--pattern" in r.stdout


def test_unsupported_model_exit_4(tmp_path, capsys):
    assert main(["compile", "tests.factories:opaque_model", "-o", str(tmp_path / "o")]) == 4
    err = capsys.readouterr().err
    assert "no capture method" in err and "export" in err
    assert main(["compile", "tests.factories:wrong_inputs", "-o", str(tmp_path / "o")]) == 4
    assert "example inputs" in capsys.readouterr().err


def test_onnx_failing_checker_exit_3(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("MatMul", ["x", "missing_weight"], ["y"])
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    bad = tmp_path / "invalid.onnx"
    onnx.save(helper.make_model(graph), str(bad))
    assert main(["compile", str(bad), "-o", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert "invalid.onnx" in err and "onnx.checker" in err
    assert main(["audit", str(bad)]) == 3
