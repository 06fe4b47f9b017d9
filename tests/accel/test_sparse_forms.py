"""Runtime forms chosen by measurement: CSR on CPU (three call forms), semi-structured on CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphprune.config import CompileConfig
from graphprune.errors import ConfigError
from graphprune.passes.base import PassContext
from graphprune.passes.fx.convert_sparse_forms import (
    CSR_FORMS,
    CSRLinear,
    SparseFormsConfig,
    apply_sparse_forms,
    choose_form,
    convert_sparse_forms,
    semi_structured_reject_reason,
)
from graphprune.runtime.compare import compare_outputs
from graphprune.runtime.microbench import Timing, record_layer_inputs, speedup, time_alternating


def _sparse_mlp(sparsity: float = 0.95, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    with torch.no_grad():
        for i in (0, 2):
            w = model[i].weight
            w[torch.rand(w.shape, generator=gen) < sparsity] = 0.0
    return model, (torch.randn(2, 16, 64, generator=gen),)


@pytest.mark.parametrize("form", CSR_FORMS)
@pytest.mark.parametrize("bias", [True, False])
def test_csr_call_forms_match_dense(form, bias):
    torch.manual_seed(0)
    lin = nn.Linear(48, 24, bias=bias)
    with torch.no_grad():
        lin.weight[torch.rand_like(lin.weight) < 0.9] = 0
    x = torch.randn(3, 5, 48)
    csr = CSRLinear(lin.weight, lin.bias, form)
    y = csr(x)
    assert y.shape == (3, 5, 24) and y.is_contiguous()
    assert compare_outputs(lin(x), y).ok
    assert "nnz=" in repr(csr)


def test_convert_without_measuring_numbers_unchanged():
    model, x = _sparse_mlp()
    ref = model(*x)
    report = apply_sparse_forms(model, x, SparseFormsConfig(measure=False))
    chosen = {lf.name: lf.chosen for lf in report.layers}
    assert chosen == {"0": "csr:linear", "2": "csr:linear", "4": "dense"}
    assert isinstance(model[0], CSRLinear) and isinstance(model[4], nn.Linear)
    assert "below the CSR threshold" in report.layers[2].reason
    with torch.no_grad():
        assert compare_outputs(ref, model(*x)).ok
    assert report.layers[0].input_shape == (2, 16, 64)


def test_measured_choice_records_ratios():
    model, x = _sparse_mlp()
    opts = SparseFormsConfig(blocks=3, warmup=1, min_block_s=0.002)
    report = apply_sparse_forms(model, x, opts)
    rec = report.layers[0]
    assert set(rec.forms_ms) == {"dense", "csr:linear", "csr:mm", "csr:addmm"}
    assert rec.dense_ms is not None and rec.sparse_ms is not None and rec.ratio == pytest.approx(rec.dense_ms / rec.sparse_ms)
    for lf in report.layers[:2]:  # chosen only where it measured a win
        assert (lf.chosen != "dense") == (lf.ratio >= opts.min_speedup)
        assert ("faster than dense" in lf.reason) == (lf.chosen != "dense")
    assert "layer" in report.table() and report.to_dict()["layers"][0]["name"] == "0"


def test_min_speedup_keeps_dense():
    model, x = _sparse_mlp()
    report = apply_sparse_forms(model, x, SparseFormsConfig(blocks=2, warmup=1, min_block_s=0.001, min_speedup=1e6))
    assert not report.converted
    assert all(isinstance(m, nn.Linear) for m in model if isinstance(m, (nn.Linear, CSRLinear)))
    assert "kept dense" in report.layers[0].reason


def test_layer_that_does_not_run_and_unsupported_dtype():
    model, _ = _sparse_mlp()
    model.unused = nn.Linear(4, 4)  # type: ignore[assignment]
    with torch.no_grad():
        model.unused.weight.zero_()
    rec, mod = choose_form("unused", model.unused, None, SparseFormsConfig(measure=False))
    assert mod is None and "did not run" in rec.reason
    half = nn.Linear(64, 64).half()
    with torch.no_grad():
        half.weight.zero_()
    rec, mod = choose_form("half", half, torch.randn(2, 64).half(), SparseFormsConfig(measure=False))
    assert mod is None and "fp32/fp64" in rec.reason


def test_pass_wrapper_and_config_validation():
    model, x = _sparse_mlp()
    result = convert_sparse_forms(model, CompileConfig(), PassContext(x), options=SparseFormsConfig(measure=False))
    assert result.modified and result.report.to_dict()["converted"] == 2
    with pytest.raises(ConfigError, match="csr_threshold"):
        SparseFormsConfig(csr_threshold=1.5)
    with pytest.raises(ConfigError, match="csr_forms"):
        SparseFormsConfig(csr_forms=("dense",))
    with pytest.raises(ConfigError, match="fp32_policy"):
        SparseFormsConfig(fp32_policy="tf32")  # type: ignore[arg-type]


def test_semi_structured_rejects_cpu_weights():
    assert "CUDA" in (semi_structured_reject_reason(torch.zeros(64, 64, dtype=torch.float16)) or "")


def test_cuda_target_policy_reasons():
    """The CUDA decisions, checked on CPU tensors by naming the target."""
    from graphprune.passes.fx.convert_sparse_forms import _candidate
    from graphprune.sparsity import nm_mask

    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    rec, builders = _candidate("dense", lin, SparseFormsConfig(), device_type="cuda")
    assert not builders and "not 2:4" in rec.reason
    with torch.no_grad():
        lin.weight.mul_(nm_mask(lin.weight, 2, 4, axis=1))
    rec, builders = _candidate("fp32", lin, SparseFormsConfig(), device_type="cuda")
    assert not builders and rec.candidate == "semi_structured"
    assert "fp32 weight" in rec.reason and "fp32_policy" in rec.reason  # skipped, with the policy stated
    rec, builders = _candidate("cast", lin, SparseFormsConfig(fp32_policy="fp16"), device_type="cuda")
    assert not builders and "CUDA" in rec.reason  # the cast is allowed; this CPU weight is then rejected
    rec, builders = _candidate("half", lin.half(), SparseFormsConfig(), device_type="cuda")
    assert not builders and "CUDA" in rec.reason


def test_microbench_alternates_and_records_inputs():
    calls: list[str] = []
    t = time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, blocks=3, min_block_s=0.0)
    assert len(t["a"].samples_ms) == 3 and t["a"].reps == 1
    assert calls[-6:] == ["a", "b", "a", "b", "a", "b"]  # alternating blocks after the warm-up
    assert speedup(Timing([2.0]), Timing([1.0])) == 2.0
    model, x = _sparse_mlp()
    seen = record_layer_inputs(model, x, ["0", "2"])
    assert seen["2"][0][0].shape == (2, 16, 256)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (sm80+) for semi-structured kernels")
def test_semi_structured_on_cuda_policy_and_numbers():
    from graphprune.sparsity import nm_mask

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1000)).cuda()
    with torch.no_grad():
        for m in (model[0], model[2]):
            m.weight.mul_(nm_mask(m.weight, 2, 4, axis=1))
    x = (torch.randn(8, 128, 1024, device="cuda"),)
    fp32 = apply_sparse_forms(model, x, SparseFormsConfig(measure=False))
    assert all(lf.chosen == "dense" and "fp32" in lf.reason for lf in fp32.layers)
    half = model.half()
    xh = (x[0].half(),)
    ref = half(*xh)
    rep = apply_sparse_forms(half, xh, SparseFormsConfig(measure=False))
    by = {lf.name: lf for lf in rep.layers}
    assert by["0"].chosen == "semi_structured"
    assert by["2"].chosen == "dense" and "multiple of" in by["2"].reason  # 1000 rows: the kernel rejects the shape
    assert compare_outputs(ref, half(*xh)).ok
