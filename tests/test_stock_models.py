"""Models as users write them (issue 11): stock transformers configs, a TorchScript CNN, bfloat16.

Each compiles at 2:4 through ``graphprune.compile`` with a clean audit and onnxruntime parity at two
batch sizes; the ONNX is named after the model's own inputs and outputs and its batch axis is dynamic.
These compile real (tiny) HF models, a few seconds each: marked slow.
"""

from __future__ import annotations

import onnx
import pytest
import torch

import graphprune
from graphprune.runtime.compare import tolerance_for
from models import zoo

STOCK_TEXT = {
    # name: (ONNX inputs, ONNX outputs, exporter that succeeds)
    "stock_gpt2_lm": (["input_ids", "attention_mask"], ["logits"], "dynamo"),
    "stock_llama_lm": (["input_ids", "attention_mask"], ["logits"], "dynamo"),
    "stock_t5": (["input_ids", "attention_mask", "decoder_input_ids"], ["last_hidden_state", "encoder_last_hidden_state"], "dynamo-relaxed"),
    "stock_swin": (["pixel_values"], ["last_hidden_state", "pooler_output"], "dynamo-relaxed"),
}


def _graph(path):
    return onnx.load(str(path), load_external_data=False).graph


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STOCK_TEXT))
def test_stock_model_compiles_at_2to4_with_audit_and_parity(name, tmp_path):
    model, inputs = zoo.build(name)
    cache_before = getattr(model.config, "use_cache", None)
    res = graphprune.compile(model, inputs, output_dir=tmp_path)
    rep = res.report
    assert rep.audit["ok"], rep.audit["summary"]
    assert rep.audit["matched"] == rep.counts()["pruned"] >= 8
    parity = res.validation["onnx_parity"]
    assert parity["ok"], parity["message"]
    assert len(parity["batch_sizes"]) == 2 and parity["batch_sizes"][0] != parity["batch_sizes"][1]
    want_in, want_out, exporter = STOCK_TEXT[name]
    g = _graph(res.onnx_path)
    assert [i.name for i in g.input] == want_in
    assert [o.name for o in g.output] == want_out
    assert all(_dims(i)[0] == "batch" for i in g.input) and all(_dims(o)[0] == "batch" for o in g.output)
    assert rep.capture["onnx_exporter"] == exporter
    attempts = rep.capture["onnx_export"]
    assert attempts[-1] == {**attempts[-1], "exporter": exporter, "ok": True}
    if exporter != "dynamo":  # each failed attempt is one line naming its cause
        assert attempts[0]["exporter"] == "dynamo" and not attempts[0]["ok"]
        assert "Cannot view a tensor" in attempts[0]["error"] and "\n" not in attempts[0]["error"]
    if cache_before is True:
        assert rep.capture["inputs"]["cache"].startswith("off")
        assert any("use_cache turned off" in n for n in rep.notes)
        assert model.config.use_cache is True  # the caller's model is untouched
    if name == "stock_t5":
        assert any("decoder_input_ids [2, 16] built from input_ids shifted right" in n for n in rep.notes)
    # pruned.pt2 carries the same dynamic batch: it runs at a batch size it was not traced with
    ep = torch.export.load(str(tmp_path / "pruned.pt2"))
    args = ep.example_inputs[0]
    bigger = tuple(a.repeat(3, *([1] * (a.dim() - 1))) if isinstance(a, torch.Tensor) else a for a in args)
    with torch.no_grad():
        out = ep.module()(*bigger)
    assert next(iter(out.values())).shape[0] == 3 * args[0].shape[0]


@pytest.mark.slow
def test_torchscript_cnn_with_batchnorm_compiles(tmp_path):
    model, inputs = zoo.build("torchscript_conv_bn")
    res = graphprune.compile(model, inputs, output_dir=tmp_path)
    assert res.report.capture["onnx_exporter"] == "torchscript"
    assert res.report.audit["ok"], res.report.audit["summary"]
    assert res.validation["onnx_parity"]["ok"]
    init_of = res.report.audit["initializer_of"]
    convs = [d.param for d in res.report.decisions if d.pruned and d.op.startswith("conv")]
    assert len(convs) == 2  # 16->32 and 32->32; the stem (K = 3 input channels) is not divisible by 4
    for p in convs:  # BN folded into the conv: renamed and rescaled, found by value
        assert init_of[p].startswith("onnx::Conv_") or init_of[p] != p
    assert any("BatchNorm folded" in n for n in res.report.notes)


@pytest.mark.slow
def test_bf16_llama_compiles_with_parity_reported(tmp_path):
    model, inputs = zoo.build("stock_llama_bf16")
    res = graphprune.compile(model, inputs, output_dir=tmp_path)
    assert res.report.audit["ok"], res.report.audit["summary"]
    parity = res.validation["onnx_parity"]
    assert parity["ok"], parity["message"]
    assert "float32 copy of the bfloat16 ONNX" in parity["how"] and "upcast to float32" in parity["how"]
    # both sides compute in float32; the ONNX's folded constants are bfloat16, so bfloat16's tolerance
    assert parity["tolerance"] == tolerance_for("bfloat16").to_dict()
    g = _graph(res.onnx_path)
    kinds = {t.data_type for t in g.initializer if len(t.dims) == 2}
    assert kinds == {onnx.TensorProto.BFLOAT16}  # the ONNX keeps the model's dtype
    assert all(p.dtype == torch.bfloat16 for p in res.model.parameters())  # the reference upcast was undone
    assert not list(tmp_path.glob(".*float32*"))  # the float32 copy is gone


@pytest.mark.slow
def test_dtype_option_casts_on_the_way_in(tmp_path):
    model, inputs = zoo.build("stock_llama_lm")
    res = graphprune.compile(model, inputs, {"pattern": "2:4", "dtype": "float16"}, output_dir=tmp_path)
    assert res.validation["onnx_parity"]["ok"] and res.report.audit["ok"]
    assert {t.data_type for t in _graph(res.onnx_path).initializer if len(t.dims) == 2} == {onnx.TensorProto.FLOAT16}
    assert any("cast from float32 to float16" in n for n in res.report.notes)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched
