"""onnxruntime sessions, runs with initializer overrides, and torch-vs-ONNX parity."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from graphprune.errors import ConfigError, DependencyError, InputError
from graphprune.runtime.compare import compare_outputs
from graphprune.runtime.ort import check_parity, ort_session, random_inputs, run_onnx

from .conftest import make_model, save


@pytest.mark.parametrize("name", ["mlp", "convbn", "gpt2like"])
def test_parity_of_exported_models(exported, name):
    model, inputs, path, _ = exported(name)
    stats = check_parity(model, inputs, path)
    assert stats.ok, stats.summary()
    assert stats.n_outputs == (2 if name == "mlp" else 1)
    assert stats.max_abs < 1e-5 and stats.cosine_min > 0.999999
    assert stats.tolerance.rtol == 1e-4


def test_corrupted_weight_fails_parity(exported, tmp_path):
    model, inputs, path, _ = exported("convbn")
    proto = onnx.load(str(path))
    init = next(t for t in proto.graph.initializer if t.name == "gconv.weight")
    w = numpy_helper.to_array(init).copy()
    w[3, 1, 1, 1] += 0.5  # one weight of one grouped-conv filter
    init.CopyFrom(numpy_helper.from_array(w, name=init.name))
    bad = save(proto, tmp_path / "corrupt.onnx")
    stats = check_parity(model, inputs, bad)
    assert not stats.ok
    assert stats.max_abs > 1e-2 and stats.per_output[0].mismatched > 0


def test_initializer_override_replaces_weight_for_one_session(exported):
    model, inputs, path, _ = exported("mlp")
    before = path.read_bytes()
    zero = np.zeros((8, 32), np.float32)
    logits, _ = run_onnx(path, inputs, initializers={"fc2.weight": zero})
    expected = np.broadcast_to(model.fc2.bias.detach().numpy(), logits.shape)
    np.testing.assert_array_equal(logits, expected)
    # the file is untouched and a fresh session sees the stored weight again
    assert path.read_bytes() == before
    again = run_onnx(path, inputs)[0]
    assert not np.allclose(again, expected)
    with pytest.raises(ConfigError, match="names no initializer"):
        run_onnx(path, inputs, initializers={"nope": zero})
    with pytest.raises(ConfigError, match=r"float32\[8, 32\]"):
        run_onnx(path, inputs, initializers={"fc2.weight": np.zeros((32, 8), np.float32)})


def test_conv_weight_override_is_honoured(exported, tmp_path):
    """Regression: ORT_ENABLE_ALL's NCHWc layout pass ignores add_initializer for Conv weights."""
    _, inputs, path, _ = exported("convbn")
    proto = onnx.load(str(path))
    init = next(t for t in proto.graph.initializer if t.name == "conv.weight")  # Conv 8 -> 16: NCHWc-eligible
    half = numpy_helper.to_array(init) * 0.5
    init.CopyFrom(numpy_helper.from_array(half, name="conv.weight"))
    rewritten = save(proto, tmp_path / "half.onnx")
    overridden = run_onnx(path, inputs, initializers={"conv.weight": half})[0]
    stored = run_onnx(path, inputs)[0]
    expected = run_onnx(rewritten, inputs)[0]
    assert np.abs(stored - expected).max() > 1e-2
    assert compare_outputs(expected, overridden).ok


def test_session_options_and_input_mapping(exported):
    _, inputs, path, _ = exported("mlp")
    sess = ort_session(path)
    opts = sess.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert sess.get_providers() == ["CPUExecutionProvider"]
    by_order = run_onnx(sess, inputs)
    by_name = run_onnx(sess, {"x": inputs[0], "ignored_extra": np.zeros(1)})
    by_names = run_onnx(sess, inputs, input_names=["x"])
    for a, b, c in zip(by_order, by_name, by_names):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    with pytest.raises(InputError, match="2 input tensor"):
        run_onnx(sess, (inputs[0], inputs[0]))
    with pytest.raises(InputError, match="no value for ONNX input"):
        run_onnx(sess, {"y": inputs[0]})


def test_random_inputs_follow_graph_types(tmp_path):
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    model = make_model(nodes, [("x", ["batch", 3])], [("y", ["batch", 3])], {})
    ids = helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [2, "seq"])
    model.graph.input.append(ids)
    feed = random_inputs(model, seed=3)
    assert feed["x"].shape == (1, 3) and feed["x"].dtype == np.float32
    assert feed["ids"].shape == (2, 1) and feed["ids"].dtype == np.int64 and feed["ids"].max() < 4
    np.testing.assert_array_equal(random_inputs(model, seed=3)["x"], feed["x"])


def test_bad_files_raise_input_error_naming_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.onnx does not exist"):
        ort_session(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(InputError, match="garbage.onnx fails onnx.checker"):
        ort_session(garbage)


def test_missing_onnxruntime_is_a_dependency_error(exported, monkeypatch):
    _, _, path, _ = exported("mlp")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(DependencyError, match="pip install onnxruntime"):
        ort_session(path)


def test_parity_matches_inputs_by_name_when_exporter_drops_one(tmp_path):
    torch.manual_seed(0)

    class Skip(torch.nn.Module):
        def forward(self, unused, x):
            return x * 2

    traced = torch.jit.trace(Skip(), (torch.randn(2), torch.randn(3)))
    from graphprune.runtime.export import export_onnx

    record = export_onnx(traced, (torch.randn(2), torch.randn(3)), tmp_path / "skip.onnx")
    assert record.input_names == ["x"]
    assert check_parity(traced, (torch.randn(2), torch.randn(3)), record.path).ok
