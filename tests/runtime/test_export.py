"""torch -> ONNX export: how weights appear, names, cleanup, exporters, errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from graphprune.errors import ConfigError, InputError, OutputError, UnsupportedModelError
from graphprune.runtime.export import ExportOptions, export_onnx, save_onnx
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
    assert record.initializer_sources["fc1.weight"] == {
        "param": "fc1.weight", "transposed": False, "same_values": True, "how": "identity"
    }
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
    assert src == {"param": "proj.weight", "transposed": True, "same_values": True, "how": "view"}
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
    assert "ONNX export of Linear failed with every exporter tried (dynamo: RuntimeError: Failed to export the model" in msg
    assert "<- ValueError: Could not guard on data-dependent" in msg and "torch.cond" in msg
    # a branch on tensor values: the tracing exporter would bake one branch in, so it is not tried
    assert "torchscript:" not in msg and "not retried with the tracing exporters" in msg
    assert "dynamo-relaxed" not in msg  # relaxing is tried only after a decomposition failure
    # one line: the exporter's output (graph dumps) goes to the log (-v), not into the message
    assert "\n" not in msg and "exporter chatter" not in msg and "exporter chatter" in caplog.text
    assert "\x1b" not in msg and list(tmp_path.iterdir()) == []

    def other_failure(*args, **kwargs):
        raise RuntimeError("\x1b[96mFailed to export the model\x1b[0m\nlong text")

    monkeypatch.setattr(torch.onnx, "export", other_failure)
    with pytest.raises(UnsupportedModelError) as info:
        export_onnx(nn.Linear(2, 2), (torch.randn(1, 2),), tmp_path / "bad.onnx")
    msg = str(info.value)
    assert "(dynamo: RuntimeError: Failed to export the model" in msg
    assert "; torchscript: RuntimeError: Failed to export the model" in msg  # each attempt, one line each


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


# ---- issue 11: names, dynamic axes, exporter fallback, value mapping, options ---------------------------
class Seq(nn.Module):
    """[batch, sequence, 8] -> {"logits": ..., "pooled": ...}."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, tokens):
        h = self.fc(tokens)
        return {"logits": h, "pooled": h.mean(1)}


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_dynamic_batch_and_sequence_named_after_the_axes(tmp_path):
    torch.manual_seed(0)
    model = Seq().eval()
    x = torch.randn(1, 5, 8)  # batch 1: traced at batch 2 (torch.export specializes 1)
    record = export_onnx(model, (x,), tmp_path / "seq.onnx", dynamic=True, dynamic_axes={"tokens": {1: "sequence"}})
    g = onnx.load(str(record.path)).graph
    assert [i.name for i in g.input] == ["tokens"] and [o.name for o in g.output] == ["logits", "pooled"]
    assert _dims(g.input[0]) == ["batch", "sequence", 8]
    assert _dims(g.output[0]) == ["batch", "sequence", 8] and _dims(g.output[1]) == ["batch", 8]
    assert record.dynamic_axes["tokens"] == {0: "batch", 1: "sequence"}
    stats = check_parity(model, (x,), record.path)  # "auto": the example batch and another
    assert stats.ok and stats.batch_sizes == [1, 3]
    assert check_parity(model, (torch.randn(4, 9, 8),), record.path, batch_sizes=None).ok  # another sequence length
    ep = record.exported_program  # the same program, for pruned.pt2
    with torch.no_grad():
        assert ep.module()(torch.randn(3, 7, 8))["logits"].shape == (3, 7, 8)


def test_batch_the_model_fixes_stays_static_with_a_note(tmp_path):
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)
            self.per_row = nn.Parameter(torch.zeros(2, 4))  # one row per example: the batch of 2 is baked in

        def forward(self, x):
            return self.fc(x) + self.per_row

    record = export_onnx(Fixed().eval(), (torch.randn(2, 8),), tmp_path / "f.onnx", dynamic=True)
    assert _dims(onnx.load(str(record.path)).graph.input[0]) == [2, 8]
    assert any("dynamic axis x:0 stayed static" in n for n in record.notes)
    with pytest.raises(ConfigError, match="dynamic axis for 'y': the model's tensor inputs are x"):
        export_onnx(Fixed().eval(), (torch.randn(2, 8),), tmp_path / "g.onnx", dynamic_axes={"y": {0: "b"}})


def test_decomposition_failure_is_retried_relaxed(tmp_path, monkeypatch):
    """A dynamo decomposition failure (stock T5/Swin: "Cannot view a tensor") -> the relaxed retry."""
    torch.manual_seed(0)

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            b, n, _ = x.shape
            h = self.fc(x).view(b, n, 4, 4).transpose(1, 2)
            return h.transpose(1, 2).reshape(b, n, 16)

    real = torch.onnx.export

    def decompose_fails_unless_relaxed(model, *args, **kwargs):
        if isinstance(model, torch.export.ExportedProgram):
            relaxed = any(n.target == torch.ops.aten.clone.default for n in model.graph.nodes)
            if not relaxed:
                raise RuntimeError("Failed to decompose the FX graph for ONNX compatibility. Next steps:\nmore")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", decompose_fails_unless_relaxed)
    model = Heads().eval()
    x = (torch.randn(2, 3, 16),)
    record = export_onnx(model, x, tmp_path / "h.onnx", dynamic=True)
    assert record.exporter == "dynamo-relaxed"
    assert [a["exporter"] for a in record.attempts] == ["dynamo", "dynamo-relaxed"]
    assert record.attempts[0]["error"] == "RuntimeError: Failed to decompose the FX graph for ONNX compatibility."
    assert any("inputs of 2 view/reshape node(s) made contiguous" in n for n in record.notes)
    assert check_parity(model, x, record.path).ok


def test_torchscript_conv_bn_maps_renamed_rescaled_weights_by_value(tmp_path):
    from .conftest import build

    model, inputs = build("convbn")
    record = export_onnx(model, inputs, tmp_path / "ts.onnx", exporters=("torchscript",))
    conv = {k: v for k, v in record.initializer_sources.items() if v["param"] == "conv.weight"}
    (name, src), = conv.items()
    assert name != "conv.weight" and src["how"] == "scaled_rows" and src["same_values"] is False
    assert record.initializer_sources  # the grouped/depthwise convs are found too
    assert {v["param"] for v in record.initializer_sources.values()} >= {"conv.weight", "gconv.weight", "dw.weight"}
    assert check_parity(model, inputs, record.path).ok
    assert not model.training  # the exporter did not leave the model in training mode


def test_map_initializers_rows_test_is_exact_on_zeros():
    from graphprune.runtime.export import _rows_scaled

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 8)).astype(np.float32)
    w[:, ::4] = 0
    s = rng.uniform(0.5, 2, size=(4, 1)).astype(np.float32)
    assert _rows_scaled(w * s, w, 1e-4)
    moved = (w * s).copy()
    moved[0, 0], moved[0, 1] = moved[0, 1], 0.0  # same values per row, one zero moved
    assert not _rows_scaled(moved, w, 1e-4)
    assert not _rows_scaled(w * s + 1e-2, w, 1e-4)


def test_export_options_validate_and_round_trip():
    opts = ExportOptions(dtype="bf16", dynamic_axes=ExportOptions.parse_dynamic_axis("input_ids:1=sequence"))
    assert opts.dynamic_axes == {"input_ids": {1: "sequence"}} and opts.dynamic_batch
    assert ExportOptions.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts
    assert ExportOptions.parse_dynamic_axis("mask:2") == {"mask": {2: "mask_dim2"}}
    with pytest.raises(ConfigError, match="--dynamic-axis 'input_ids'"):
        ExportOptions.parse_dynamic_axis("input_ids")
    with pytest.raises(ConfigError, match="dtype int8 cannot be used"):
        ExportOptions(dtype="int8")
    with pytest.raises(ConfigError, match="exporters must be a non-empty subset of dynamo, dynamo-relaxed, torchscript"):
        ExportOptions(exporters=("onnxscript",))


def test_no_room_for_the_initializers_is_an_output_error_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 100, 100))
    with pytest.raises(OutputError, match=r"has 0\.00 GB free but the ONNX of Linear"):
        export_onnx(nn.Linear(64, 64).eval(), (torch.randn(2, 64),), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_large_graph_skips_the_pattern_rewriter_but_still_folds_weight_transposes(tmp_path, monkeypatch):
    from graphprune.runtime import export as export_mod

    from .conftest import build

    monkeypatch.setattr(export_mod, "_REWRITE_MAX_NODES", 0)  # every graph counts as large
    model, inputs = build("gpt2like")
    record = export_onnx(model, inputs, tmp_path / "big.onnx")
    assert any("pattern rewriter was skipped" in n for n in record.notes)
    matmul = next(n for n in onnx.load(str(record.path)).graph.node if n.op_type == "MatMul")
    assert record.initializer_sources[matmul.input[1]]["param"] == "proj.weight"  # the transpose was folded
    assert check_parity(model, inputs, record.path).ok
