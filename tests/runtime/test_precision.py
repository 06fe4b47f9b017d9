"""runtime/precision.py: dtype option, float32 reference in place, float32 copy of a bf16/fp16 ONNX."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from graphprune.errors import ConfigError
from graphprune.runtime.compare import assert_close
from graphprune.runtime.ort import run_onnx
from graphprune.runtime.precision import (
    cast_model,
    onnx_low_precision,
    resolve_dtype,
    upcast_in_place,
    upcast_onnx,
)


def test_resolve_dtype_and_one_line_errors():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype("float32") is torch.float32
    with pytest.raises(ConfigError, match="dtype float64 cannot be used: TensorRT .* no float64"):
        resolve_dtype("float64")
    with pytest.raises(ConfigError, match="int8 cannot be used: .*quantization"):
        resolve_dtype("int8")
    with pytest.raises(ConfigError, match="not a torch floating dtype; choose float32, float16 or bfloat16"):
        resolve_dtype("float17")


def test_upcast_in_place_is_an_exact_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 8, bias=False))
    model[1].weight = model[0].weight  # tied
    model.register_buffer("scale", torch.tensor([0.5]))  # float32 buffer stays float32
    model.to(torch.bfloat16)
    model.scale.data = model.scale.data.float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    param = model[0].weight
    with upcast_in_place(model) as changed:
        assert changed and param.dtype == torch.float32 and model[1].weight is model[0].weight
        assert torch.equal(param.to(torch.bfloat16), before["0.weight"])
    assert param is model[0].weight and param.dtype == torch.bfloat16
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert cast_model(model, torch.bfloat16) is None
    assert cast_model(model, torch.float16) == "cast from bfloat16 to float16 (dtype option)"


def _bf16_model(rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    w = rng.standard_normal((4, 3)).astype(np.float32)
    w_bf16 = numpy_helper.from_array(w.astype(np.dtype(helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16))), "W")
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["h"]),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(
            np.array([2.0], dtype=np.float32).astype(np.dtype(helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16))))),
        helper.make_node("Mul", ["h", "two"], ["h2"]),
        helper.make_node("Cast", ["h2"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Relu", ["f"], ["r"]),
        helper.make_node("Cast", ["r"], ["Y"], to=TensorProto.BFLOAT16),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("X", TensorProto.BFLOAT16, ["batch", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.BFLOAT16, ["batch", 3])],
        [w_bf16],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, numpy_helper.to_array(w_bf16).astype(np.float32)


@pytest.mark.parametrize("external", [False, True])
def test_upcast_onnx_computes_the_same_function_in_float32(tmp_path, external):
    rng = np.random.default_rng(0)
    model, w = _bf16_model(rng)
    src = tmp_path / "bf16.onnx"
    onnx.save_model(model, src, save_as_external_data=external, size_threshold=0, location="bf16.onnx.data")
    assert onnx_low_precision(src) == "bfloat16"
    dst = upcast_onnx(src, tmp_path / "f32.onnx")
    assert onnx_low_precision(dst) is None
    assert (tmp_path / "f32.onnx.data").exists() == external
    onnx.checker.check_model(str(dst))
    x = rng.standard_normal((5, 4)).astype(np.float32)
    (out,) = run_onnx(dst, {"X": x})
    assert out.dtype == np.float32
    assert_close(np.maximum(2 * (x @ w), 0), out, dtype="float32")
