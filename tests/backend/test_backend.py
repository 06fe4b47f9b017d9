"""The ``torch.compile`` backend: found by name, numbers equal to eager, pruning option, masked
training form, inductor hand-off."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from graphprune.backend import BackendOptions, graphprune_backend, last_report
from graphprune.errors import ConfigError
from graphprune.runtime.compare import compare_outputs
from graphprune.sparsity import nm_mask
from models.zoo import build

ZOO = [
    "mlp", "conv_bn", "residual_cnn", "depthwise_cnn", "conv_variety", "functional_matmul", "tied_weights",
    "attention_block", "hf_bert", "hf_gpt2", "hf_llama",
]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled(model, inputs, **options):
    with torch.no_grad():
        return torch.compile(model, backend="graphprune", options=options)(*inputs)


def test_entry_point_finds_the_backend():
    from torch._dynamo.backends.registry import lookup_backend

    assert "graphprune" in torch._dynamo.list_backends()
    assert lookup_backend("graphprune") is graphprune_backend


@pytest.mark.parametrize("name", ZOO)
def test_default_equals_eager(name):
    model, inputs = build(name)
    with torch.no_grad():
        ref = model(*inputs)
    out = _compiled(model, inputs, inductor=False)
    assert compare_outputs(ref, out).ok
    rep = last_report()
    assert rep is not None and rep.compiler == "eager (inductor=False)" and not rep.pruned
    assert all(f["chosen"] == "dense" for f in rep.forms)  # dense zoo weights: nothing to accelerate


@pytest.mark.parametrize("name", ZOO)
def test_pattern_prunes_first(name):
    model, inputs = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = _compiled(model, inputs, inductor=False, pattern="2:4")
    rep = last_report()
    assert rep is not None and rep.pruned
    for k, v in model.state_dict().items():  # the user's weights are untouched
        assert torch.equal(v, before[k]), k
    reference = copy.deepcopy(model)
    pruned = {p["weight"]: p["k_axis"] for p in rep.pruned}
    with torch.no_grad():
        for pname, p in reference.named_parameters():
            if pname in pruned:  # independent reference: the library mask along the axis the report names
                p.mul_(nm_mask(p, 2, 4, axis=pruned[pname]))
        ref = reference(*inputs)
    assert compare_outputs(ref, out).ok
    assert set(pruned) <= {n for n, _ in model.named_parameters()}, "report names must be the model's own"
    assert all(0.5 < p["kept_magnitude"] <= 1.0 for p in rep.pruned)
    if name in ("conv_bn", "residual_cnn"):  # the stem conv reads 3 input channels
        assert any("not divisible by M=4" in s["reason"] and "k_not_divisible" in s["reason"] for s in rep.skipped)
    if name == "hf_gpt2":  # HF Conv1D: weight [in, out] read by addmm, K is axis 0
        conv1d = {n: k for n, k in pruned.items() if n.endswith(("c_attn.weight", "c_fc.weight", "c_proj.weight"))}
        assert conv1d and set(conv1d.values()) == {0}
    if name == "functional_matmul":  # x @ W with W [K, N]: K is axis 0
        assert pruned.get("weight") == 0


def _sparse_mlp():
    model, inputs = build("mlp")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p[torch.rand(p.shape, generator=gen) < 0.9] = 0.0
    return model, inputs


def test_csr_forms_through_inductor():
    model, inputs = _sparse_mlp()
    with torch.no_grad():
        ref = model(*inputs)
    out = _compiled(model, inputs, measure=False)
    rep = last_report()
    assert rep is not None
    assert [f["chosen"] for f in rep.forms] == ["csr:linear"] * 3
    assert compare_outputs(ref, out).ok
    assert rep.compiler == "inductor" if shutil.which("g++") or shutil.which("cc") else rep.compiler.startswith("eager")


def test_pruned_conv_model_through_inductor():
    model, inputs = build("conv_bn")
    out = _compiled(model, inputs, pattern="2:4")
    rep = last_report()
    assert rep is not None and len(rep.pruned) == 3
    reference = copy.deepcopy(model)
    pruned = {p["weight"] for p in rep.pruned}
    with torch.no_grad():
        for pname, p in reference.named_parameters():
            if pname in pruned:
                p.mul_(nm_mask(p, 2, 4, axis=1))
        assert compare_outputs(reference(*inputs), out).ok


def test_grad_mode_uses_masked_form():
    model, inputs = build("mlp")
    compiled = torch.compile(model, backend="graphprune", options={"inductor": False, "pattern": "2:4"})
    out = compiled(*inputs)
    out.sum().backward()
    rep = last_report()
    assert rep is not None and any("grad mode is on" in n for n in rep.notes)
    w = model.layers[0].weight
    mask = nm_mask(w, 2, 4, axis=1)
    assert bool((w.grad[~mask] == 0).all()) and bool((w.grad[mask] != 0).any())


def test_options_are_validated():
    with pytest.raises(ConfigError, match="unknown graphprune backend option"):
        BackendOptions.from_options({"patern": "2:4"})
    with pytest.raises(ConfigError, match="element-wise"):
        BackendOptions.from_options({"pattern": "channels:0.5"})
    with pytest.raises(ConfigError, match="inductor"):
        BackendOptions.from_options({"inductor": "no"})
    assert BackendOptions.from_options({"pattern": "4:8"}).pattern is not None


def test_inductor_failure_falls_back_to_eager(monkeypatch):
    import torch._inductor.compile_fx as cfx

    def boom(*a, **k):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(cfx, "compile_fx", boom)
    model, inputs = build("mlp")
    with torch.no_grad():
        ref = model(*inputs)
    out = _compiled(model, inputs)
    rep = last_report()
    assert rep is not None and rep.compiler.startswith("eager (inductor failed: RuntimeError: no C++ compiler")
    assert compare_outputs(ref, out).ok


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (sm80+) for semi-structured kernels")
def test_cuda_semi_structured_through_backend():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048)).cuda().half().eval()
    x = (torch.randn(16, 128, 2048, device="cuda", dtype=torch.float16),)
    out = _compiled(model, x, pattern="2:4", measure=False)
    rep = last_report()
    assert rep is not None and all(f["chosen"] == "semi_structured" for f in rep.forms)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            if p.dim() == 2:
                p.mul_(nm_mask(p, 2, 4, axis=1))
        assert compare_outputs(reference(*x), out).ok
