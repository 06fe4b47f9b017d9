"""The CLI's calibration, fidelity, plan, budget and export options (issues 11 and 12), end to end."""

import copy
import json

import numpy as np
import pytest
import torch

from graphprune.cli import main
from graphprune.plan import Plan
from graphprune.training.oneshot import prune_oneshot
from tests.factories import calib_batches, calib_net, eval_batches

NET = "tests.factories:calib_net"
CAL = "tests.factories:calib_batches"
EVAL = "tests.factories:eval_batches"


def _row_cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Independent of graphprune.runtime.fidelity: cosine of each output row, in float64 numpy."""
    x, y = a.detach().double().numpy(), b.detach().double().numpy()
    return (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def _compile(tmp_path, name, *extra):
    out = tmp_path / name
    rc = main(["compile", NET, "-o", str(out), *extra])
    return rc, out


def test_calibrated_compile_reports_fidelity_that_an_independent_computation_confirms(tmp_path, capsys):
    rc, out = _compile(tmp_path, "cal", "--calib", CAL, "--eval", EVAL)
    assert rc == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("quality:"))
    assert "fidelity to the dense model" in line and "parity" not in line  # never worded like ONNX parity
    assert "out err" in text  # the per-layer table shows where the damage is
    rep = json.loads((out / "report.json").read_text())
    fid = rep["fidelity"]
    assert fid["source"] == "eval" and fid["samples"] == 3 * 48 and fid["schema"] >= 1
    assert {"mean_cosine", "min_cosine", "rel_l2"} <= set(fid["outputs"][0])
    assert {e["param"] for e in fid["layers"]} == {"inp.weight", "blocks.0.0.weight", "blocks.0.2.weight",
                                                   "blocks.1.0.weight", "blocks.1.2.weight", "head.weight"}
    assert all(0 < e["output_error"] < 1 for e in fid["layers"])
    names = [p["name"] for p in rep["passes"]]
    assert names[:2] == ["calibration-data", "copy"] and "calibrate" in names  # sparsegpt, the default with --calib
    # independent: the dense factory model vs the pruned.pt2 compile wrote, on the same held-out batches
    dense, _ = calib_net()
    pruned = torch.export.load(str(out / "pruned.pt2")).module()
    cos = np.concatenate([_row_cosines(dense(x), pruned(x)) for (x,) in eval_batches()])
    assert fid["outputs"][0]["mean_cosine"] == pytest.approx(cos.mean(), abs=1e-5)
    assert fid["outputs"][0]["min_cosine"] == pytest.approx(cos.min(), abs=1e-5)
    # calibration beats magnitude on the same held-out data (the reason it exists)
    rc, mag = _compile(tmp_path, "mag", "--method", "magnitude", "--eval", EVAL)
    assert rc == 0
    mag_fid = json.loads((mag / "report.json").read_text())["fidelity"]
    assert mag_fid["outputs"][0]["mean_cosine"] < fid["outputs"][0]["mean_cosine"]


def test_plan_from_the_training_side_applies_through_the_cli(tmp_path):
    model, _ = calib_net()
    trained = copy.deepcopy(model)
    plan = prune_oneshot(trained, calib_batches(), method="sparsegpt")
    plan.save(tmp_path / "plan")
    rc, out = _compile(tmp_path, "o", "--plan", str(tmp_path / "plan"))
    assert rc == 0
    pruned = dict(torch.export.load(str(out / "pruned.pt2")).named_parameters())
    for name in plan.sites:
        assert torch.equal(pruned[name], dict(trained.named_parameters())[name])
    wrong = Plan.from_masks({"inp.weight": torch.ones(64, 16, dtype=torch.bool)})
    wrong.save(tmp_path / "wrong")
    assert _compile(tmp_path, "o2", "--plan", str(tmp_path / "wrong"))[0] == 3
    assert _compile(tmp_path, "o3", "--plan", str(tmp_path / "missing"))[0] == 3


def test_accuracy_budget_through_the_cli(tmp_path, capsys):
    rc, out = _compile(tmp_path, "b", "--calib", CAL, "--eval", EVAL, "--max-drift", "0.5")
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert 1 - min(o["mean_cosine"] for o in rep["fidelity"]["outputs"]) <= 0.5
    assert any(p["name"] == "accuracy-budget" for p in rep["passes"])
    # a budget nothing can meet: exit 6 with the figures; no model written, only the failed run's report
    capsys.readouterr()
    rc, out = _compile(tmp_path, "tight", "--calib", CAL, "--eval", EVAL, "--max-drift", "1e-9")
    assert rc == 6 and "drift" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["report.failed.json"]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--method", "sparsegpt"], 2, "calibration"),
        (["--calib", CAL, "--max-drift", "1.5"], 2, "max_drift"),
        (["--calib", CAL, "--max-drift", "0.1", "--min-cosine", "0.9"], 2, "one accuracy budget"),
        (["--calib", "tests.factories:no_such_function"], 3, "no_such_function"),
        (["--calib", "no_such_package_xyz:f"], 3, "no_such_package_xyz"),
        (["--calib", "tests.factories:returns_int"], 3, "returns_int"),
        (["--calib-batch", "0", "--calib", CAL], 2, "calib_batch"),
        (["--dynamic-axis", "x"], 2, "--dynamic-axis"),
        (["--calib", "tests.factories:calib_wrong_shape"], 3, "batch"),
        (["--calib", "tests.factories:calib_non_finite"], 3, "batch"),
    ],
)
def test_bad_calibration_options(tmp_path, capsys, args, code, words):
    assert _compile(tmp_path, "o", *args)[0] == code
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("graphprune compile: error:")]
    assert "Traceback" not in err and len(errors) == 1 and words in errors[0], err


def test_npz_calibration_file_with_missing_or_extra_arrays(tmp_path, capsys):
    x = torch.cat([b[0] for b in calib_batches()]).numpy()
    np.savez(tmp_path / "cal.npz", x)  # arr_0: the first positional input
    assert _compile(tmp_path, "ok", "--calib", str(tmp_path / "cal.npz"), "--calib-batch", "48")[0] == 0
    capsys.readouterr()
    np.savez(tmp_path / "extra.npz", x, x)
    assert _compile(tmp_path, "o2", "--calib", str(tmp_path / "extra.npz"))[0] == 3
    assert "extra.npz" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", x[:, :5])
    assert _compile(tmp_path, "o3", "--calib", str(tmp_path / "bad.npz"))[0] == 3


def test_data_options_on_onnx_input_exit_2(tmp_path, capsys):
    rc, out = _compile(tmp_path, "o")
    assert rc == 0
    capsys.readouterr()
    assert main(["compile", str(out / "model.onnx"), "--calib", CAL, "-o", str(tmp_path / "x")]) == 2
    assert "--calib" in capsys.readouterr().err


def test_export_options_dtype_and_dynamic_batch(tmp_path):
    import onnx

    rc, out = _compile(tmp_path, "fp16", "--dtype", "float16", "--no-dynamic-batch")
    assert rc == 0
    m = onnx.load(str(out / "model.onnx"))
    inp = m.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.FLOAT16
    assert inp.shape.dim[0].HasField("dim_value")  # static batch
    rep = json.loads((out / "report.json").read_text())
    assert rep["parity"]["ok"] and rep["config"]["dtype"] == "float16"
    rc, out = _compile(tmp_path, "dyn")
    assert rc == 0
    dim0 = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.HasField("dim_param")  # dynamic batch by default


def test_calibration_on_torchscript_says_what_works(tmp_path, capsys):
    """A TorchScript model is captured by the module walk and its layers cannot be hooked: exit 2 naming
    what works (magnitude, or the model as .pt2 / factory); fidelity on --eval data still works."""
    from torch import nn

    torch.manual_seed(0)
    ts = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))), str(ts))
    assert main(["compile", str(ts), "--input-shape", "4,32", "--calib", CAL, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "TorchScript" in err and "--method magnitude" in err and not (tmp_path / "o").exists()
    assert main(["compile", str(ts), "--input-shape", "4,32", "--eval", EVAL, "-o", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "report.json").read_text())["fidelity"]["source"] == "eval"


def test_structured_pattern_notes_that_calibration_only_feeds_fidelity(tmp_path):
    rc, out = _compile(tmp_path, "s", "--pattern", "channels:0.5", "--calib", CAL, "--eval", EVAL)
    assert rc == 0
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert any("fidelity figure only" in n for n in notes)


def test_named_batches_for_named_example_inputs(tmp_path, capsys):
    """A factory with named (dict) example inputs takes calibration / evaluation batches as dicts, bound to
    the forward the way the example is; the result equals the positional model's on the same data."""
    rc, out = _compile(tmp_path, "pos", "--calib", CAL, "--eval", EVAL)
    assert rc == 0
    assert main(["compile", "tests.factories:named_net", "--calib", "tests.factories:named_batches",
                 "--eval", "tests.factories:named_eval", "-o", str(tmp_path / "named")]) == 0
    pos = json.loads((out / "report.json").read_text())["fidelity"]
    named = json.loads((tmp_path / "named" / "report.json").read_text())["fidelity"]
    assert named["samples"] == pos["samples"]
    assert named["outputs"][0]["mean_cosine"] == pytest.approx(pos["outputs"][0]["mean_cosine"], abs=1e-6)
    capsys.readouterr()
    assert main(["compile", "tests.factories:named_net", "--calib", "tests.factories:named_wrong_key",
                 "-o", str(tmp_path / "bad")]) == 3
    assert "(y: float32[8, 32]) but the example inputs had (x: float32[4, 32])" in capsys.readouterr().err
    assert main(["compile", "tests.factories:named_net", "--calib", CAL, "-o", str(tmp_path / "bad2")]) == 3  # tuples for named
    assert main(["compile", NET, "--calib", "tests.factories:named_batches", "-o", str(tmp_path / "bad3")]) == 3  # dicts for positional


def test_calibration_batches_are_cast_with_dtype(tmp_path):
    rc, out = _compile(tmp_path, "h", "--dtype", "float16", "--calib", CAL, "--eval", EVAL, "--method", "wanda")
    assert rc == 0
    fid = json.loads((out / "report.json").read_text())["fidelity"]
    assert fid["source"] == "eval" and fid["outputs"][0]["mean_cosine"] > 0.5
