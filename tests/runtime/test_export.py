"""torch -> ONNX export: how weights appear, names, cleanup, exporters, errors."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from graphprune.errors import InputError, OutputError, UnsupportedModelError
from graphprune.runtime.export import export_onnx, save_onnx
from graphprune.runtime.ort import check_parity


def _nodes(path):
    return onnx.load(str(path)).graph.node


def _attr(node, name):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def test_linear_becomes_gemm_with_named_weight(exported):
    model, _, path, record = exported("mlp")
    proto = onnx.load(str(path))
    gemms = [n for n in proto.graph.node if n.op_type == "Gemm"]
    assert [n.input[1] for n in gemms] == ["fc1.weight", "fc2.weight"]
    assert [_attr(n, "transB") for n in gemms] == [1, 1]
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert (inits["fc1.weight"] == model.fc1.weight.detach().numpy()).all()  # values untouched by cleanup
    assert record.exporter == "dynamo" and record.input_names == ["x"]
    assert len(record.output_names) == 2  # {"logits": t, "aux": (t,)} flattened
    assert record.initializer_sources["fc1.weight"] == {"param": "fc1.weight", "transposed": False, "same_values": True}
    onnx.checker.check_model(proto)
    # graphsurgeon drops node metadata; export restores it (module scope for the audit)
    assert any(p.key == "pkg.torch.onnx.name_scopes" for p in gemms[0].metadata_props)


def test_gpt2_conv1d_and_rank3_linear(exported):
    _, _, path, record = exported("gpt2like")
    nodes = {n.op_type: n for n in _nodes(path)}
    gemm, matmul = nodes["Gemm"], nodes["MatMul"]
    assert gemm.input[1] == "c_attn_weight" and _attr(gemm, "transB") in (None, 0)  # [in, out] used as is
    # Linear on a rank-3 input: the exporter stores W^T [in, out] under a new name
    src = record.initializer_sources[matmul.input[1]]
    assert src == {"param": "proj.weight", "transposed": True, "same_values": True}
    assert any("proj.weight^T" in n for n in record.notes)


def test_conv_bn_is_folded_and_reported(exported):
    _, _, path, record = exported("convbn")
    convs = [n for n in _nodes(path) if n.op_type == "Conv"]
    assert [n.input[1] for n in convs] == ["conv.weight", "gconv.weight", "dw.weight"]
    assert [_attr(n, "group") for n in convs] == [1, 4, 32]
    assert not any(n.op_type == "BatchNormalization" for n in _nodes(path))
    assert record.initializer_sources["conv.weight"]["same_values"] is False
    assert any("conv.weight" in n and "BatchNorm" in n for n in record.notes)


def test_torchscript_exporter_and_signature_names(tmp_path):
    torch.manual_seed(0)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, tokens, unused):
            return self.fc(tokens)

    model = Two().eval()
    inputs = (torch.randn(2, 8), torch.randn(3))
    traced = torch.jit.trace(model, inputs)
    record = export_onnx(traced, inputs, tmp_path / "ts.onnx")
    assert record.exporter == "torchscript"
    assert record.input_names == ["tokens"]  # names from the schema; the unused input was dropped
    stats = check_parity(traced, inputs, record.path)
    assert stats.ok and stats.max_abs < 1e-5


def test_exported_program_and_graph_module(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = (torch.randn(3, 8),)
    ep = torch.export.export(model, x, strict=False)
    r1 = export_onnx(ep, x, tmp_path / "ep.onnx")
    gm = torch.fx.symbolic_trace(model)
    r2 = export_onnx(gm, x, tmp_path / "gm.onnx")
    for r, m in ((r1, ep), (r2, gm)):
        assert r.exporter == "dynamo"
        assert check_parity(m, x, r.path).ok


def test_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    record = export_onnx(model, (torch.randn(2, 8),), tmp_path / "dyn.onnx", dynamic=True)
    dims = onnx.load(str(record.path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 8
    assert check_parity(model, (torch.randn(5, 8),), record.path).ok




def test_exporter_failure_names_the_cause(tmp_path, monkeypatch, caplog):
    # (a real failing export costs seconds: torch retries strict, then draft export)
    def failing_export(*args, **kwargs):
        print("exporter chatter")
        try:
            raise ValueError("Could not guard on data-dependent expression")
        except ValueError as cause:
            raise RuntimeError("\x1b[96mFailed to export the model\x1b[0m\nlong text") from cause

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    with caplog.at_level("DEBUG", logger="graphprune"), pytest.raises(UnsupportedModelError) as info:
        export_onnx(nn.Linear(2, 2), (torch.randn(1, 2),), tmp_path / "bad.onnx")
    msg = str(info.value)
    assert "Linear with the dynamo exporter failed: RuntimeError: Failed to export the model" in msg
    assert "<- ValueError: Could not guard on data-dependent" in msg and "torch.cond" in msg
    # one line: the exporter's output (graph dumps) goes to the log (-v), not into the message
    assert "\n" not in msg and "exporter chatter" not in msg and "exporter chatter" in caplog.text
    assert "\x1b" not in msg and list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="cannot export an object of type int"):
        export_onnx(3, (torch.randn(1),), tmp_path / "x.onnx")
    with pytest.raises(OutputError, match="is a directory"):
        export_onnx(nn.Linear(2, 2), (torch.randn(1, 2),), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no temporaries left


def test_save_onnx_is_atomic_on_failure(tmp_path, exported, monkeypatch):
    _, _, path, _ = exported("mlp")
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")

    def half_write(model, f, *args, **kwargs):
        open(f, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", half_write)
    with pytest.raises(OutputError, match="disk full"):
        save_onnx(onnx.load(str(path)), target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
