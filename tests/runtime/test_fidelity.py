"""Fidelity (pruned vs dense) against an independent numpy computation, and the report's schema."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from graphprune.errors import InputError
from graphprune.runtime.fidelity import (
    FIDELITY_SCHEMA_VERSION,
    FidelityReport,
    LayerError,
    measure_fidelity,
)


def np_cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine written out by hand (float64)."""
    out = []
    for x, y in zip(a, b):
        nx, ny = math.sqrt(float((x * x).sum())), math.sqrt(float((y * y).sum()))
        out.append(1.0 if nx == 0 and ny == 0 else (0.0 if nx == 0 or ny == 0 else float((x * y).sum()) / (nx * ny)))
    return np.array(out)


class Enc(nn.Module):
    """Tokens [B, T, H], a pooled [B, H] vector and logits [B, C] — the three kinds of output."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(6, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        h = torch.tanh(self.emb(x))
        pooled = h.mean(1)
        return {"hidden": h, "pooled": pooled, "logits": self.head(pooled), "ids": x.argmax(-1)}


def pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    dense = Enc()
    pruned = Enc()
    pruned.load_state_dict(dense.state_dict())
    with torch.no_grad():
        pruned.emb.weight.mul_((torch.rand_like(pruned.emb.weight) > 0.5).float())
        pruned.head.weight.mul_((torch.rand_like(pruned.head.weight) > 0.4).float())
    return dense, pruned


def test_numbers_match_numpy_by_hand() -> None:
    dense, pruned = pair()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 6, generator=g),), (torch.randn(2, 5, 6, generator=g),)]
    rep = measure_fidelity(dense, pruned, batches)
    by = {o.name: o for o in rep.outputs}
    assert set(by) == {"hidden", "pooled", "logits"}  # the integer output is not compared
    assert (by["hidden"].kind, by["pooled"].kind, by["logits"].kind) == ("tokens", "samples", "logits")
    with torch.no_grad():
        outs = [(dense(*b), pruned(*b)) for b in batches]
    for name, flat in (("hidden", lambda t: t.reshape(-1, 8)), ("pooled", lambda t: t), ("logits", lambda t: t)):
        d = np.concatenate([flat(o[0][name]).double().numpy() for o in outs])
        p = np.concatenate([flat(o[1][name]).double().numpy() for o in outs])
        cos = np_cos_rows(d, p)
        o = by[name]
        assert o.count == len(cos) == {"hidden": 4 * 3 + 2 * 5, "pooled": 6, "logits": 6}[name]
        assert o.mean_cosine == pytest.approx(cos.mean(), abs=1e-12)
        assert o.min_cosine == pytest.approx(cos.min(), abs=1e-12)
        assert o.rel_l2 == pytest.approx(math.sqrt(((d - p) ** 2).sum() / (d**2).sum()), rel=1e-12)
        if name == "logits":
            assert o.top1_agreement == pytest.approx(float((d.argmax(1) == p.argmax(1)).mean()))
        else:
            assert o.top1_agreement is None
    assert 0 < rep.mean_cosine < 1 and rep.mean_cosine == min(o.mean_cosine for o in rep.outputs)
    assert rep.drift == pytest.approx(1 - rep.mean_cosine)
    assert rep.batches == 2 and rep.samples == 6


def test_identical_models_are_perfect_and_zero_vectors_count() -> None:
    dense, _ = pair()
    rep = measure_fidelity(dense, dense, [(torch.randn(3, 2, 6),)])
    assert all(o.mean_cosine == pytest.approx(1.0) and o.rel_l2 == 0.0 for o in rep.outputs)
    assert rep.outputs[2].top1_agreement == 1.0
    zero = nn.Linear(4, 3)
    with torch.no_grad():
        zero.weight.zero_()
        zero.bias.zero_()
    ones = nn.Linear(4, 3)
    one = measure_fidelity(zero, zero, [torch.randn(2, 4)])  # both zero: cosine 1
    assert one.outputs[0].mean_cosine == 1.0 and one.outputs[0].rel_l2 == 0.0
    other = measure_fidelity(zero, ones, [torch.randn(2, 4)])  # only one zero: cosine 0, rel L2 inf
    assert other.outputs[0].mean_cosine == 0.0 and other.outputs[0].rel_l2 == math.inf


def test_plain_tensor_output_named_output_and_logits_by_index() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(5, 4)
    rep = measure_fidelity(a, b, [x], logits=[0])
    o = rep.outputs[0]
    assert o.name == "output" and o.kind == "logits"
    with torch.no_grad():
        assert o.top1_agreement == pytest.approx(float((a(x).argmax(1) == b(x).argmax(1)).float().mean()))


def test_report_dict_schema_and_summary_wording() -> None:
    dense, pruned = pair()
    rep = measure_fidelity(dense, pruned, [(torch.randn(4, 3, 6),)], source="eval")
    rep = rep.with_layers([LayerError("emb.weight", 0.25, "sparsegpt", 12)]).with_notes("a note")
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["schema"] == FIDELITY_SCHEMA_VERSION == 1
    assert set(d) == {
        "schema", "what", "source", "batches", "samples", "mean_cosine", "min_cosine", "drift", "summary", "notes",
        "outputs", "layers",
    }
    assert "not ONNX parity" in d["what"]
    assert set(d["outputs"][0]) == {
        "index", "name", "shape", "kind", "count", "mean_cosine", "min_cosine", "rel_l2", "top1_agreement"
    }
    assert d["layers"] == [{"param": "emb.weight", "output_error": 0.25, "method": "sparsegpt", "rows": 12}]
    assert d["notes"] == ["a note"]
    s = rep.summary()
    assert s.startswith("fidelity to the dense model: mean cosine ")
    assert "parity" not in s and "4 eval samples" in s
    worst = rep.worst
    assert worst is not None and f"{worst.mean_cosine:.3f}" in s


def test_bad_inputs() -> None:
    dense, pruned = pair()
    with pytest.raises(InputError, match="at least one evaluation batch"):
        measure_fidelity(dense, pruned, [])
    with pytest.raises(InputError, match=r"evaluation batch 1 failed in the model's forward"):
        measure_fidelity(dense, pruned, [(torch.randn(1, 2, 6),), (torch.randn(1, 2, 7),)])
    other = nn.Linear(6, 8)
    with pytest.raises(InputError, match="not the dense model's"):
        measure_fidelity(dense, other, [(torch.randn(1, 2, 6),)])
    assert isinstance(FidelityReport((), 0, 0, "eval").summary(), str)
