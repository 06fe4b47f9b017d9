"""TensorRT: parsing the engine inspector and build log (no TensorRT needed); clear errors without it."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from graphprune.errors import DependencyError, InputError
from graphprune.runtime.tensorrt import merge_sparsity, parse_inspector_json, parse_sparsity_log

# Shaped like get_engine_information(LayerInformationFormat.JSON) of an engine built with
# ProfilingVerbosity.DETAILED (TensorRT 10): one dense GEMM, one sparse conv, one fused elementwise.
CANNED_INSPECTOR = {
    "Layers": [
        {
            "Name": "/encoder/layer.0/intermediate/dense/MatMul",
            "LayerType": "CaskGemmMatrixMultiply",
            "Inputs": [{"Name": "x", "Format/Datatype": "Row major linear FP16 format"}],
            "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP16 format"}],
            "TacticName": "sm80_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x32_stage4_warpsize2x2x1_tensor16x8x16",
            "TacticValue": "0x0000000000020318",
            "Metadata": "[ONNX Layer: /encoder/layer.0/intermediate/dense/MatMul]",
        },
        {
            "Name": "Conv_22 + Relu_23",
            "LayerType": "CaskConvolution",
            "Outputs": [{"Name": "r", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
            "TacticName": "sm80_xmma_fprop_sparse_conv_f16f16_f16f16_f16_nhwckrsc_nhwc_tilesize128x128x64_stage3_warpsize2x2x1_g1_sptensor16x8x32",
            "TacticValue": "0x1bd9a1c4a5e35d00",
            "Metadata": "[ONNX Layer: Conv_22]\u001e[ONNX Layer: Relu_23]",
        },
        {"Name": "Add_7", "LayerType": "PointWiseV2", "TacticName": "", "Outputs": []},
    ],
    "Bindings": ["x", "y"],
}

CANNED_LOG = [
    "[I] [TRT] Some other message",
    "[I] [TRT] (Sparsity) Layers eligible for sparse math: /encoder/layer.0/intermediate/dense/MatMul, Conv_22 + Relu_23",
    "[I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: Conv_22 + Relu_23",
]


def test_parse_inspector_json_records_tactics():
    layers = parse_inspector_json(json.dumps(CANNED_INSPECTOR))
    assert [lay.name for lay in layers] == ["/encoder/layer.0/intermediate/dense/MatMul", "Conv_22 + Relu_23", "Add_7"]
    gemm, conv, add = layers
    assert gemm.sparse is False and conv.sparse is True and add.sparse is None
    assert gemm.layer_type == "CaskGemmMatrixMultiply" and "FP16" in gemm.precision
    assert conv.origin == "Conv_22,Relu_23"


def test_layer_names_only_and_bad_json():
    layers = parse_inspector_json({"Layers": ["a", "b"], "Bindings": []})
    assert [(lay.name, lay.sparse) for lay in layers] == [("a", None), ("b", None)]
    with pytest.raises(InputError, match="not JSON"):
        parse_inspector_json("{nope")
    with pytest.raises(InputError, match="'Layers'"):
        parse_inspector_json({"Bindings": []})


def test_parse_log_and_merge():
    eligible, picked = parse_sparsity_log(CANNED_LOG)
    assert eligible == ["/encoder/layer.0/intermediate/dense/MatMul", "Conv_22 + Relu_23"]
    assert picked == ["Conv_22 + Relu_23"]
    layers = merge_sparsity(parse_inspector_json(CANNED_INSPECTOR), eligible, picked)
    by = {lay.name: lay for lay in layers}
    assert by["/encoder/layer.0/intermediate/dense/MatMul"].eligible is True
    assert by["/encoder/layer.0/intermediate/dense/MatMul"].sparse is False  # eligible, dense tactic was faster
    assert by["Conv_22 + Relu_23"].sparse is True and by["Add_7"].eligible is False
    assert parse_sparsity_log(["(Sparsity) TRT inference plan picked sparse implementation for layers:"]) == ([], [])


_HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(_HAVE_TRT and torch.cuda.is_available(), reason="checks the error raised where TensorRT or a GPU is missing")
def test_missing_tensorrt_or_gpu_is_a_clear_error(tmp_path):
    from graphprune.runtime.tensorrt import build_engine

    with pytest.raises(DependencyError, match="TensorRT|CUDA GPU"):
        build_engine(tmp_path / "model.onnx")


@pytest.mark.gpu
@pytest.mark.skipif(not (_HAVE_TRT and torch.cuda.is_available()), reason="needs TensorRT (pip install tensorrt) and a CUDA GPU")
def test_sparse_engine_reports_layers(tmp_path):
    from graphprune.runtime.export import export_onnx
    from graphprune.runtime.tensorrt import compare_sparse_dense
    from graphprune.sparsity import nm_mask

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2048, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 2048)).eval()
    with torch.no_grad():
        for m in (model[0], model[2]):
            m.weight.mul_(nm_mask(m.weight, 2, 4, axis=1))
    path = tmp_path / "m.onnx"
    export_onnx(model, (torch.randn(256, 2048),), path)
    rep = compare_sparse_dense(path, blocks=3)
    assert rep.sparse_build.layers and "SPARSE_WEIGHTS" in rep.sparse_build.flags
    assert "SPARSE_WEIGHTS" not in rep.dense_build.flags
    assert rep.timings["dense"]["median_ms"] > 0 and rep.timings["sparse"]["median_ms"] > 0
    assert "picked sparse tactics" in rep.table()
