"""prune_onnx: prune ONNX weight initializers directly, audit them, prove parity with the masked original."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from graphprune.config import SemiStructured, Unstructured
from graphprune.errors import InputError, OutputError, ValidationError, WeightError
from graphprune.passes.onnx import prune_initializers as pi
from graphprune.passes.onnx.prune_initializers import prune_onnx
from graphprune.report import SkipReason
from graphprune.runtime.export import export_onnx
from graphprune.runtime.ort import check_parity
from tests.runtime.conftest import build, make_model, save


class Mixed(nn.Module):
    """GPT-2 Conv1D (addmm, weight [in, out]), Linear on a rank-3 input (MatMul), and a layer with K = 6."""

    def __init__(self) -> None:
        super().__init__()
        self.c_fc = nn.Parameter(torch.randn(16, 32) * 0.2)
        self.c_fc_bias = nn.Parameter(torch.randn(32) * 0.1)
        self.down = nn.Linear(32, 6)
        self.head = nn.Linear(6, 8)  # K = 6: not divisible by 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.addmm(self.c_fc_bias, x.reshape(-1, 16), self.c_fc).reshape(*x.shape[:-1], 32)
        return self.head(torch.relu(self.down(torch.relu(h))))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    torch.manual_seed(0)
    model = Mixed().eval()
    inputs = (torch.randn(2, 3, 16),)
    path = tmp_path_factory.mktemp("mixed") / "mixed.onnx"
    record = export_onnx(model, inputs, path)
    return model, inputs, path, record


def _nm_oracle(w: np.ndarray, axis: int, n: int = 2, m: int = 4) -> bool:
    """Hand-written N:M check: groups of m consecutive entries along ``axis``."""
    rows = np.moveaxis(w, axis, -1).reshape(-1, w.shape[axis] // m, m)
    return bool(((rows != 0).sum(-1) <= n).all())


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_semi_structured_end_to_end(mixed, tmp_path):
    model, inputs, src, record = mixed
    before = src.read_bytes()
    out = tmp_path / "pruned.onnx"
    result = prune_onnx(src, out, SemiStructured(n=2, m=4))
    assert src.read_bytes() == before  # the input is never modified

    by_param = {record.initializer_sources.get(d.param, {}).get("param", d.param): d for d in result.decisions}
    assert sorted(by_param) == ["c_fc", "down.weight", "head.weight"]
    assert [d.pruned for d in result.decisions] == [True, True, False]
    assert by_param["head.weight"].reason is SkipReason.K_NOT_DIVISIBLE
    assert "K=6" in by_param["head.weight"].message
    assert (by_param["c_fc"].op, by_param["c_fc"].k_axis) == ("gemm", 0)  # [in, out] read with transB=0
    assert (by_param["down.weight"].op, by_param["down.weight"].k_axis) == ("matmul", 0)  # transposed copy [in, out]
    for d in result.decisions:
        if d.pruned:
            assert d.zeros == d.numel // 2 and d.pattern == "2:4"
            assert 0.5 < d.kept_magnitude < 1.0

    # structure: the audit and a hand-written oracle agree on the written file
    assert result.audit.ok and result.audit.n == 2 and result.audit.source == str(out)
    written = _weights(out)
    for d in result.decisions:
        assert _nm_oracle(written[d.param], d.k_axis) is d.pruned
    # numbers: masked original in onnxruntime == written file (the same computation, bit for bit here)
    assert result.parity is not None and result.parity.ok and result.parity.max_abs <= 1e-6

    # and the torch model carrying the pruned weights computes what the pruned file computes
    pruned = Mixed().eval()
    pruned.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, arr in written.items():
            src_info = record.initializer_sources.get(name)
            if src_info is None:
                continue
            value = torch.from_numpy(arr.T.copy() if src_info["transposed"] else arr.copy())
            pruned.get_parameter(src_info["param"]).copy_(value)
    assert (pruned.c_fc == 0).float().mean().item() == pytest.approx(0.5)
    stats = check_parity(pruned, inputs, out)
    assert stats.ok and stats.max_abs < 1e-5
    assert not check_parity(model, inputs, out).ok  # the dense model no longer matches


def test_conv_grouped_and_depthwise(tmp_path):
    model, inputs = build("convbn")
    src = tmp_path / "convbn.onnx"
    export_onnx(model, inputs, src)
    result = prune_onnx(src, tmp_path / "out.onnx", "2:4")
    decisions = {d.param: d for d in result.decisions}
    assert decisions["conv.weight"].pruned and decisions["gconv.weight"].pruned
    assert decisions["dw.weight"].reason is SkipReason.K_NOT_DIVISIBLE  # depthwise: K = 1
    assert all(d.k_axis == 1 and d.op == "conv" for d in result.decisions)
    assert result.audit.ok and result.parity is not None and result.parity.ok


def test_unstructured_layer_and_global(mixed, tmp_path):
    _, _, src, _ = mixed
    layer = prune_onnx(src, tmp_path / "u.onnx", Unstructured(sparsity=0.75))
    assert all(d.pruned for d in layer.decisions)  # no K constraint for unstructured
    for d in layer.decisions:
        assert d.zeros == round(0.75 * d.numel)
    assert layer.audit.ok and layer.audit.n is None and layer.parity.ok
    glob = prune_onnx(src, tmp_path / "g.onnx", "unstructured:0.5@global")
    zeros = sum(d.zeros for d in glob.decisions)
    numel = sum(d.numel for d in glob.decisions)
    assert zeros == round(0.5 * numel)
    assert len({d.zeros / d.numel for d in glob.decisions}) > 1  # one threshold, different per-layer ratios


def _skip_graph() -> onnx.ModelProto:
    """One weight per skip reason, plus one prunable weight P."""
    rng = np.random.default_rng(0)

    def w():
        return rng.standard_normal((8, 8)).astype(np.float32)

    const = numpy_helper.from_array(w(), "C")
    nodes = [
        helper.make_node("MatMul", ["x", "T"], ["y1"], name="tied_1"),
        helper.make_node("MatMul", ["y1", "T"], ["y2"], name="tied_2"),
        helper.make_node("Constant", [], ["C"], name="const_c", value=const),
        helper.make_node("MatMul", ["y2", "C"], ["y3"], name="mm_const"),
        helper.make_node("MatMul", ["y3", "P"], ["y4"], name="mm_p"),
        helper.make_node("MatMul", ["y4", "Q"], ["y"], name="mm_q"),
        helper.make_node("MatMul", ["xi", "I"], ["yi"], name="mm_int"),
    ]
    model = make_model(nodes, [("x", [1, 8])], [("y", [1, 8])], {"T": w(), "P": w(), "Q": w()}, check=False)
    model.graph.input.append(helper.make_tensor_value_info("xi", TensorProto.INT32, [1, 8]))
    model.graph.output.append(helper.make_tensor_value_info("yi", TensorProto.INT32, [1, 8]))
    model.graph.initializer.append(numpy_helper.from_array(np.ones((8, 8), np.int32), "I"))
    onnx.checker.check_model(model)
    return model


def test_every_skip_has_a_reason(tmp_path):
    src = save(_skip_graph(), tmp_path / "skips.onnx")
    result = prune_onnx(src, tmp_path / "out.onnx", "2:4", exclude=["mm_q"])
    reasons = {d.param: (d.pruned, d.reason) for d in result.decisions}
    assert reasons == {
        "T": (False, SkipReason.TIED_WEIGHT),
        "C": (False, SkipReason.UNSUPPORTED_OP),
        "P": (True, None),
        "Q": (False, SkipReason.EXCLUDED_BY_FILTER),
        "I": (False, SkipReason.NOT_FLOATING),
    }
    assert all(d.message for d in result.decisions if not d.pruned)
    written = _weights(tmp_path / "out.onnx")
    original = _weights(src)
    assert _nm_oracle(written["P"], 0)
    for name in ("T", "Q", "I"):
        np.testing.assert_array_equal(written[name], original[name])
    only = prune_onnx(src, tmp_path / "only.onnx", "2:4", include=["P"])
    assert [d.param for d in only.decisions if d.pruned] == ["P"]
    assert {d.reason for d in only.decisions if not d.pruned} == {SkipReason.EXCLUDED_BY_FILTER}


def test_output_must_differ_from_input(mixed, tmp_path):
    _, _, src, _ = mixed
    before = src.read_bytes()
    with pytest.raises(OutputError, match="overwrite its input"):
        prune_onnx(src, src, "2:4")
    with pytest.raises(OutputError, match="overwrite its input"):
        prune_onnx(src, src.parent / ".." / src.parent.name / src.name, "2:4")
    assert src.read_bytes() == before


def test_input_failing_checker_names_the_file(tmp_path):
    broken = _skip_graph()
    broken.graph.node[0].input[1] = "does_not_exist"
    path = tmp_path / "broken.onnx"
    onnx.save_model(broken, path)
    with pytest.raises(InputError, match=r"broken\.onnx fails onnx\.checker"):
        prune_onnx(path, tmp_path / "out.onnx", "2:4")
    assert not (tmp_path / "out.onnx").exists()


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    src = save(_skip_graph(), tmp_path / "m.onnx")
    real = pi.run_onnx

    def corrupt_candidate(path, feed, **kw):
        outs = real(path, feed, **kw)
        return outs if kw.get("initializers") else [o + 1 for o in outs]

    monkeypatch.setattr(pi, "run_onnx", corrupt_candidate)
    with pytest.raises(ValidationError, match="does not compute what the masked original computes"):
        prune_onnx(src, tmp_path / "out.onnx", "2:4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no output, no temporaries


def test_nan_weight_is_a_weight_error(tmp_path):
    model = _skip_graph()
    p = next(t for t in model.graph.initializer if t.name == "P")
    arr = numpy_helper.to_array(p).copy()
    arr[0, 0] = np.nan
    p.CopyFrom(numpy_helper.from_array(arr, "P"))
    src = save(model, tmp_path / "nan.onnx")
    with pytest.raises(WeightError, match="'P'"):
        prune_onnx(src, tmp_path / "out.onnx", "2:4")
    assert not (tmp_path / "out.onnx").exists()


def test_float16_weights_keep_their_dtype(tmp_path):
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 8])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = save(model, tmp_path / "half.onnx")
    result = prune_onnx(src, tmp_path / "out.onnx", "2:4")
    written = _weights(tmp_path / "out.onnx")["W"]
    assert written.dtype == np.float16 and _nm_oracle(written, 0)
    np.testing.assert_array_equal(written[written != 0], w[written != 0])  # kept values are bit-identical
    assert result.parity.ok and result.parity.tolerance.rtol == 1e-2  # float16 outputs: float16 tolerance
