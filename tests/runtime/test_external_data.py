"""External data (models past 2 GB) end to end, on tiny models: tensors read one at a time, missing files named."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import graphprune
from graphprune.errors import InputError
from graphprune.runtime import export as export_mod
from graphprune.runtime.audit import audit_onnx
from graphprune.runtime.external_data import check_external_data, tensor_array
from graphprune.runtime.ort import check_parity, ort_session

from .conftest import make_model, nm_along


@pytest.fixture
def external(tmp_path):
    w = nm_along((8, 12), axis=0)
    model = make_model([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [2, 8])], [("y", [2, 12])], {"w": w})
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, path, save_as_external_data=True, size_threshold=0, location="ext.onnx.data")
    return path, w


def test_tensors_are_read_from_the_data_file(external):
    path, w = external
    proto = onnx.load(str(path), load_external_data=False)
    assert check_external_data(proto, path.parent) == [path.parent / "ext.onnx.data"]
    assert np.array_equal(tensor_array(proto.graph.initializer[0], path.parent), w)
    rep = audit_onnx(path, n=2, m=4)
    assert rep.ok and rep.layers[0].k_axis == 0 and rep.layers[0].zeros == w.size // 2


def test_missing_or_truncated_data_files_are_named(external):
    path, _ = external
    data = path.parent / "ext.onnx.data"
    proto = onnx.load(str(path), load_external_data=False)
    data.write_bytes(data.read_bytes()[:10])
    with pytest.raises(InputError, match=r"ext\.onnx\.data of .* is truncated: tensor 'w' needs bytes 0\.\.384"):
        audit_onnx(path)
    data.unlink()
    for call in (lambda: audit_onnx(path), lambda: ort_session(path), lambda: tensor_array(proto.graph.initializer[0], path.parent)):
        with pytest.raises(InputError, match=r"external data file .*ext\.onnx\.data .*is missing \(tensor 'w' is stored there\)"):
            call()


def test_data_file_outside_the_model_folder_is_refused(tmp_path, external):
    path, _ = external
    proto = onnx.load(str(path), load_external_data=False)
    for e in proto.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = "../elsewhere.data"
    with pytest.raises(InputError, match="outside the model's folder"):
        tensor_array(proto.graph.initializer[0], path.parent)


def test_compile_with_external_data_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "_EXTERNAL_DATA_BYTES", 0)  # every model counts as large
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    res = graphprune.compile(model, (torch.randn(4, 16),), output_dir=tmp_path)
    data = tmp_path / "model.onnx.data"
    assert data.stat().st_size >= (16 * 32 + 32 * 8) * 4 and res.report.outputs["onnx_data"] == str(data)
    proto = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer if len(t.dims) == 2)
    assert res.report.audit["ok"] and res.validation["onnx_parity"]["ok"]
    assert check_parity(res.model, (torch.randn(3, 16),), tmp_path / "model.onnx").ok  # session from the path
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_data_file_going_missing_between_stages_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "_EXTERNAL_DATA_BYTES", 0)
    real = export_mod.export_onnx

    def export_then_lose_data(*args, **kwargs):
        rec = real(*args, **kwargs)
        (rec.path.parent / rec.external_data[0]).unlink()
        return rec

    monkeypatch.setattr(export_mod, "export_onnx", export_then_lose_data)
    model = nn.Sequential(nn.Linear(16, 16)).eval()
    with pytest.raises(InputError, match=r"external data file .*model\.onnx\.data of .*model\.onnx is missing"):
        graphprune.compile(model, (torch.randn(2, 16),), output_dir=tmp_path)
