"""The one tolerance policy and pytree output comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from graphprune.errors import ConfigError, ValidationError
from graphprune.runtime.compare import Tolerance, assert_close, compare_outputs, flatten_outputs, tolerance_for


def test_tolerance_policy_is_tight_and_ordered():
    f64, f32, f16, bf16 = (tolerance_for(d) for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16))
    assert f32 == Tolerance(rtol=1e-4, atol=1e-4)
    assert f64.rtol < f32.rtol < f16.rtol < bf16.rtol < 0.1  # never a loose default, never rtol=1
    assert tolerance_for(np.float32) == tolerance_for("float32") == tolerance_for("torch.float32") == f32
    assert tolerance_for(torch.int64) == Tolerance(0.0, 0.0)
    assert tolerance_for(np.bool_) == Tolerance(0.0, 0.0)
    with pytest.raises(ConfigError, match="complex64"):
        tolerance_for(torch.complex64)


def test_identical_pytrees_match_exactly():
    out = {"logits": torch.randn(3, 4), "aux": (torch.ones(2), None, 7)}
    flat = [t.numpy() for t in flatten_outputs(out)]
    assert len(flat) == 2  # None and the Python int are dropped, as the exporter drops them
    stats = compare_outputs(out, flat)
    assert stats.ok and stats.n_outputs == 2
    assert stats.max_abs == 0.0 and stats.mean_abs == 0.0 and stats.cosine_min == pytest.approx(1.0)
    d = stats.to_dict()
    assert d["tolerance"] == {"rtol": 1e-4, "atol": 1e-4} and len(d["per_output"]) == 2


def test_hf_model_output_flattens_like_a_dict():
    transformers = pytest.importorskip("transformers")
    out = transformers.modeling_outputs.BaseModelOutput(
        last_hidden_state=torch.randn(1, 3, 4), hidden_states=None, attentions=(torch.randn(1, 2, 3, 3),)
    )
    leaves = flatten_outputs(out)
    assert [tuple(t.shape) for t in leaves] == [(1, 3, 4), (1, 2, 3, 3)]
    assert compare_outputs(out, [t.numpy() for t in leaves]).ok


def test_small_error_passes_large_error_fails_with_statistics():
    torch.manual_seed(0)
    ref = torch.randn(64)
    assert compare_outputs(ref, ref + 1e-6).ok
    bad = ref.clone()
    bad[5] += 1e-2
    stats = compare_outputs(ref, bad, name="demo")
    assert not stats.ok
    assert stats.max_abs == pytest.approx(1e-2, rel=1e-3)
    assert stats.per_output[0].mismatched == 1
    assert "worst at (5,)" in stats.message
    with pytest.raises(ValidationError, match=r"demo: parity MISMATCH .*max_abs 0\.01"):
        assert_close(ref, bad, name="demo")


def test_atol_scales_with_output_magnitude():
    ref = torch.linspace(-100.0, 100.0, 101)
    near_zero = ref.clone()
    near_zero[50] += 5e-3  # the element at 0.0: 5e-3 <= 1e-4 * 100 = 1e-2 of the output's scale
    assert compare_outputs(ref, near_zero).ok
    near_zero[50] += 2e-2
    assert not compare_outputs(ref, near_zero).ok
    # the same absolute error on a unit-scale output fails
    assert not compare_outputs(torch.zeros(4), torch.tensor([5e-3, 0.0, 0.0, 0.0])).ok


def test_float16_uses_looser_tolerance_than_float32():
    ref = torch.randn(32, dtype=torch.float64)
    cand = ref * (1 + 3e-3)
    assert not compare_outputs(ref.float(), cand.float()).ok
    assert compare_outputs(ref.half(), cand.float()).ok  # the less precise side decides
    assert compare_outputs(ref, cand, dtype=torch.float16).ok
    assert compare_outputs(ref.bfloat16(), cand.bfloat16()).ok


def test_structure_mismatches_and_nan_are_failures():
    a = (torch.zeros(2), torch.zeros(3))
    count = compare_outputs(a, a[:1])
    assert not count.ok and "2 outputs, candidate has 1" in count.message
    shape = compare_outputs(torch.zeros(2, 3), torch.zeros(3, 2))
    assert not shape.ok and math.isinf(shape.max_abs) and "shape mismatch" in shape.message
    nan = compare_outputs(torch.ones(3), torch.tensor([1.0, float("nan"), 1.0]))
    assert not nan.ok and nan.cosine_min == 0.0
    both_nan = torch.tensor([1.0, float("nan")])
    assert compare_outputs(both_nan, both_nan.clone()).ok
    ints = compare_outputs(torch.tensor([1, 2]), np.array([1, 3]))
    assert not ints.ok and ints.tolerance == Tolerance(0.0, 0.0)
    assert not compare_outputs((), ()).ok  # comparing nothing proves nothing
