"""compile() end to end: numbers (masked == folded == ONNX in onnxruntime), structure (decision counts), safety."""

import pytest
import torch
from torch import nn

import graphprune
from graphprune import CompileConfig, SemiStructured, SkipReason, Unstructured
from graphprune.errors import WeightError


def independent_nm_ok(w: torch.Tensor, n: int, m: int, axis: int) -> bool:
    """Reference check written without graphprune: every m consecutive along `axis` has <= n nonzeros."""
    t = w.detach().movedim(axis, -1)
    groups = t.reshape(-1, t.shape[-1] // m, m)
    return bool(((groups != 0).sum(-1) <= n).all())


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 30), nn.ReLU(), nn.Linear(30, 8)).eval()


def test_compile_2to4_mlp(tmp_path):
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 32)
    res = graphprune.compile(model, (x,), output_dir=tmp_path)
    # the caller's model is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # structure: two pruned, one skipped because K=30 is not divisible by 4
    assert res.report.counts() == {"pruned": 2, "k_not_divisible": 1}
    w0 = res.model.get_parameter("0.weight")
    assert independent_nm_ok(w0, 2, 4, axis=1) and not independent_nm_ok(w0, 2, 4, axis=0)
    assert float((w0 == 0).float().mean()) == pytest.approx(0.5)
    assert torch.equal(res.model.get_parameter("4.weight"), model.get_parameter("4.weight"))
    # numbers
    assert res.validation["masked_vs_folded"]["ok"]
    assert res.validation["onnx_parity"]["ok"] and res.report.audit["ok"]
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "pruned.pt2").is_file() and (tmp_path / "report.json").is_file()
    # the pruned model differs from the dense one (it really was pruned)
    assert not torch.allclose(res.model(x), model(x))


def test_folded_equals_hand_masked_reference(tmp_path):
    model = _mlp()
    x = torch.randn(4, 32)
    res = graphprune.compile(model, (x,), output_dir=tmp_path)
    # independent reference: apply the decision "keep the 2 largest |w| of each 4 along K" by hand
    ref = _mlp()
    with torch.no_grad():
        for name in ("0.weight", "2.weight"):
            w = ref.get_parameter(name)
            g = w.abs().reshape(w.shape[0], -1, 4)
            keep = torch.zeros_like(g, dtype=torch.bool)
            for i in range(g.shape[0]):
                for j in range(g.shape[1]):
                    top = sorted(range(4), key=lambda k: -float(g[i, j, k]))[:2]
                    keep[i, j, top] = True
            w.mul_(keep.reshape(w.shape))
    torch.testing.assert_close(res.model(x), ref(x))


def test_masked_form_is_trainable_and_gradients_of_pruned_weights_are_zero(tmp_path):
    model = _mlp()
    x = torch.randn(4, 32)
    res = graphprune.compile(model, (x,), CompileConfig(form="masked"), output_dir=tmp_path)
    pruned = res.model
    pruned.train()
    pruned(x).sum().backward()
    lin = pruned[0]
    original = lin.parametrizations.weight.original
    mask = lin.parametrizations.weight[0].mask
    assert original.grad is not None
    assert torch.all(original.grad[~mask.bool()] == 0)
    assert torch.any(original.grad[mask.bool()] != 0)
    assert "parametrizations.weight.original" in "".join(pruned.state_dict())
    assert res.validation["onnx_parity"]["ok"]


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_unstructured(tmp_path, scope):
    model = _mlp()
    cfg = CompileConfig(pattern=(Unstructured(sparsity=0.8, scope=scope),))
    res = graphprune.compile(model, (torch.randn(4, 32),), cfg, output_dir=tmp_path)
    total = zeros = 0
    for d in res.report.decisions:
        assert d.pruned
        w = res.model.get_parameter(d.param)
        z = int((w == 0).sum())
        total += w.numel()
        zeros += z
        if scope == "layer":
            assert abs(z - 0.8 * w.numel()) <= 1
    assert abs(zeros - 0.8 * total) <= 1
    assert res.validation["onnx_parity"]["ok"]


def test_nan_weight_names_the_layer(tmp_path):
    from tests.factories import nan_model

    model, inputs = nan_model()
    with pytest.raises(WeightError, match="fc"):
        graphprune.compile(model, inputs, output_dir=tmp_path)


def test_overrides_and_filters(tmp_path):
    model = _mlp()
    cfg = CompileConfig(overrides={"2": None, "0": SemiStructured(n=1, m=4)})
    res = graphprune.compile(model, (torch.randn(4, 32),), cfg, output_dir=tmp_path)
    by = {d.param: d for d in res.report.decisions}
    assert by["2.weight"].reason == SkipReason.EXCLUDED_BY_OVERRIDE
    assert by["0.weight"].pattern == "1:4"
    assert independent_nm_ok(res.model.get_parameter("0.weight"), 1, 4, axis=1)
    assert res.report.audit["ok"]  # audit checks each layer with its own pattern


def test_4to8_conv(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3)).eval()
    res = graphprune.compile(model, (torch.randn(1, 8, 12, 12),), CompileConfig(pattern=(SemiStructured(n=4, m=8),)), output_dir=tmp_path)
    for name in ("0.weight", "3.weight"):
        w = res.model.get_parameter(name)
        assert independent_nm_ok(w, 4, 8, axis=1)
    assert res.validation["onnx_parity"]["ok"] and res.report.audit["ok"]


def test_audit_checks_each_layer_with_its_own_pattern(tmp_path):
    model = _mlp()
    cfg = CompileConfig(pattern=(SemiStructured(n=2, m=4),), overrides={"2": SemiStructured(n=4, m=8)})
    res = graphprune.compile(model, (torch.randn(4, 32),), cfg, output_dir=tmp_path)
    assert res.report.audit["ok"] and res.report.audit["matched"] == 2
    assert independent_nm_ok(res.model.get_parameter("2.weight"), 4, 8, axis=1)
    # 4:8 is not 2:4: the second layer really carries its own pattern
    assert not independent_nm_ok(res.model.get_parameter("2.weight"), 2, 4, axis=1)


def test_rank3_linear_weight_is_found_through_the_exporters_transpose(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    res = graphprune.compile(model, (torch.randn(2, 5, 16),), output_dir=tmp_path)
    aud = res.report.audit
    assert aud["ok"] and aud["matched"] == 2 and not aud["not_found"]
    assert set(aud["initializer_of"]) == {"0.weight", "2.weight"}


def test_permute_keeps_function_and_never_loses_magnitude(tmp_path):
    from models import zoo

    model, inputs = zoo.build("conv_bn")
    plain = graphprune.compile(model, inputs, output_dir=tmp_path / "a")
    perm = graphprune.compile(model, inputs, CompileConfig(permute=True, permute_budget_s=0.5), output_dir=tmp_path / "b")
    rec = next(p for p in perm.report.passes if p.name == "permute-channels")
    assert rec.modified and any(g["permuted"] for g in rec.details["groups"])
    overall = rec.details["overall"]
    assert overall["kept_after"] > overall["kept_before"]
    # the masks computed afterwards keep that magnitude; the plain run keeps the "before" figure
    kept = {d.param: d.kept_magnitude for d in perm.report.decisions if d.pruned}
    base = {d.param: d.kept_magnitude for d in plain.report.decisions if d.pruned}
    assert sum(kept.values()) > sum(base.values())
    assert perm.validation["onnx_parity"]["ok"] and perm.report.audit["ok"]
