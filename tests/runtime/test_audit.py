"""ONNX weight audit: which weights, which K axis, N:M verdicts, errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.errors import ConfigError, InputError
from graphprune.runtime.audit import audit_onnx, find_weight_uses

from .conftest import make_model, nm_along, save


def _matmul_chain(b_trans: int) -> onnx.ModelProto:
    """x[1,8] -> MatMul(A) -> Gemm(B, transB) -> Gemm(C) -> MatMul(Transpose(D)) -> MatMul(E[6,8] via Identity)."""
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["y1"], name="mm_a"),
        helper.make_node("Gemm", ["y1", "B"], ["y2"], name="gemm_b", transB=b_trans),
        helper.make_node("Gemm", ["y2", "C"], ["y3"], name="gemm_c"),
        helper.make_node("Transpose", ["D"], ["Dt"], name="t_d", perm=[1, 0]),
        helper.make_node("MatMul", ["y3", "Dt"], ["y4"], name="mm_d"),
        helper.make_node("Slice", ["y4", "s0", "s1", "s2"], ["y5"], name="slice"),
        helper.make_node("Identity", ["E"], ["Ei"], name="id_e"),
        helper.make_node("MatMul", ["y5", "Ei"], ["y"], name="mm_e"),
    ]
    inits = {
        "A": nm_along((8, 8), axis=0, seed=1),  # MatMul B: K = axis 0
        "B": nm_along((8, 8), axis=0, seed=2),  # 2:4 along axis 0 only: right for transB=0, wrong for transB=1
        "C": nm_along((8, 8), axis=0, seed=3),
        "D": nm_along((8, 8), axis=1, seed=4),  # used as D^T: K of the MatMul is axis 1 of the stored D
        "E": np.random.default_rng(5).standard_normal((6, 8)).astype(np.float32),  # K = 6: not divisible by 4
        "s0": np.array([0], np.int64),
        "s1": np.array([6], np.int64),
        "s2": np.array([1], np.int64),
    }
    return make_model(nodes, [("x", [1, 8])], [("y", [1, 8])], inits)


def test_matmul_gemm_axes_and_transpose_paths():
    model = _matmul_chain(b_trans=1)
    report = audit_onnx(model, n=2, m=4)
    by_node = {x.node: x for x in report.layers}
    assert list(by_node) == ["mm_a", "gemm_b", "gemm_c", "mm_d", "mm_e"]
    assert {k: v.k_axis for k, v in by_node.items()} == {"mm_a": 0, "gemm_b": 1, "gemm_c": 0, "mm_d": 1, "mm_e": 0}
    assert by_node["mm_d"].path == ("Transpose",) and by_node["mm_e"].path == ("Identity",)
    assert {k: v.nm_ok for k, v in by_node.items()} == {
        "mm_a": True, "gemm_b": False, "gemm_c": True, "mm_d": True, "mm_e": False,
    }
    # B holds 2:4 along axis 0; with transB=1 TensorRT groups axis 1, where every group of 4 is dense
    # rows 0, 1 of every 4 along axis 0 are dense, so half of the 16 groups along axis 1 hold 4 nonzeros
    assert (by_node["gemm_b"].nm_groups, by_node["gemm_b"].nm_violations) == (16, 8)
    assert by_node["gemm_b"].nm_max_nonzeros == 4
    assert "not divisible" in by_node["mm_e"].note and by_node["mm_e"].k == 6
    assert by_node["mm_a"].sparsity == pytest.approx(0.5)
    assert not report.ok  # gemm_b is expected (K divisible) and fails
    assert audit_onnx(model, n=2, m=4, expect=["A", "C", "D"]).ok
    assert not audit_onnx(model, n=2, m=4, expect=["A", "nope"]).ok
    # the same stored B is fine when the Gemm reads it untransposed
    assert audit_onnx(_matmul_chain(b_trans=0), n=2, m=4).ok


def test_conv_convtranspose_cast_constant_and_groups():
    w = nm_along((4, 8, 3, 3), axis=1, seed=1).astype(np.float16)  # stored fp16, cast to float
    g = nm_along((8, 2, 1, 1), axis=0, seed=2)  # grouped conv (group=2): K = 2 per group on axis 1
    wt = nm_along((8, 4, 3, 3), axis=0, seed=3)  # ConvTranspose [in, out, k, k]: K = axis 0
    nodes = [
        helper.make_node("Cast", ["W16"], ["W"], name="cast_w", to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "W"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["G"], name="const_g", value=numpy_helper.from_array(g, "G")),
        helper.make_node("Conv", ["c1", "G"], ["c2"], name="gconv", group=2),
        helper.make_node("Constant", [], ["WT"], name="const_wt", value=numpy_helper.from_array(wt, "WT")),
        helper.make_node("ConvTranspose", ["c2", "WT"], ["y"], name="deconv"),
    ]
    model = make_model(nodes, [("x", [1, 8, 4, 4])], [("y", [1, 4, 6, 6])], {"W16": w})
    uses = {u.node: u for u in find_weight_uses(model)}
    assert {k: (u.op, u.k_axis, u.stored_as, u.group) for k, u in uses.items()} == {
        "conv": ("Conv", 1, "initializer", 1),
        "gconv": ("Conv", 1, "constant", 2),
        "deconv": ("ConvTranspose", 0, "constant", 1),
    }
    report = audit_onnx(model, n=2, m=4)
    by_node = {x.node: x for x in report.layers}
    assert by_node["conv"].nm_ok and by_node["deconv"].nm_ok
    assert by_node["gconv"].nm_ok is False and by_node["gconv"].k == 2  # K = in/groups = 2: not divisible
    assert report.ok  # gconv is not expected by default (K % 4 != 0)
    assert by_node["conv"].path == ("Cast",) and by_node["conv"].sparsity == pytest.approx(0.5)


def test_exported_models_axes(exported):
    expected = {
        "mlp": [("Gemm", 1, "fc1"), ("Gemm", 1, "fc2")],
        # the BN-folded conv node carries the BatchNorm's module scope
        "convbn": [("Conv", 1, "bn"), ("Conv", 1, "gconv"), ("Conv", 1, "dw")],
        "gpt2like": [("Gemm", 0, ""), ("MatMul", 0, "proj")],
    }
    for name, want in expected.items():
        _, _, path, _ = exported(name)
        report = audit_onnx(path)
        assert report.ok and report.n is None
        assert [(x.op, x.k_axis, x.module) for x in report.layers] == want, name
        d = report.to_dict()
        assert d["totals"]["weights"] == len(want) and d["summary"].startswith("audit ok")
    mlp = audit_onnx(exported("mlp")[2], n=2, m=4)
    assert not mlp.ok and mlp.totals()["nm_failed"] == 2 and "2:4 holds on 0/2" in mlp.summary()


def test_files_failing_the_checker_raise_input_error(tmp_path):
    broken = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "undefined_w"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    path = save(broken, tmp_path / "broken.onnx")
    with pytest.raises(InputError, match=r"broken\.onnx fails onnx\.checker"):
        audit_onnx(path)
    with pytest.raises(InputError, match=r"nothere\.onnx does not exist"):
        audit_onnx(tmp_path / "nothere.onnx")
    with pytest.raises(ConfigError, match="both n and m"):
        audit_onnx(_matmul_chain(0), n=2)
