"""kept_magnitude, check_finite, sparsity_of, compute_mask and the public API of graphprune.sparsity."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import graphprune.sparsity as sparsity
from graphprune.config import SemiStructured, Unstructured
from graphprune.errors import ConfigError, WeightError
from graphprune.sparsity import (
    check_finite,
    compute_mask,
    kept_magnitude,
    nm_mask,
    nm_mask_2d,
    sparsity_of,
    unstructured_mask,
)


def test_public_api_is_pinned():
    assert sorted(sparsity.__all__) == [
        "NMCheck",
        "PermutationResult",
        "check_finite",
        "check_nm",
        "compute_mask",
        "global_unstructured_masks",
        "kept_magnitude",
        "nm_mask",
        "nm_mask_2d",
        "search_permutation",
        "sparsity_of",
        "unstructured_mask",
    ]
    for name in sparsity.__all__:
        assert getattr(sparsity, name) is not None


def test_sparsity_imports_no_fx_or_onnx():
    """graphprune.sparsity is pure tensor maths: no graph, ONNX or pass imports in any of its modules."""
    banned = ("torch.fx", "torch.export", "torch.onnx", "onnx", "onnxruntime", "onnxscript", "onnx_graphsurgeon")
    banned_gp = ("graphprune.passes", "graphprune.analysis", "graphprune.runtime", "graphprune.api")
    for path in sorted(Path(sparsity.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                bad = any(name == b or name.startswith(b + ".") for b in banned + banned_gp)
                assert not bad, f"{path.name} imports {name}"


def test_kept_magnitude():
    w = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    assert kept_magnitude(w, torch.tensor([[False, True], [False, True]])) == pytest.approx(0.6)
    assert kept_magnitude(w, torch.ones(2, 2, dtype=torch.bool)) == 1.0
    assert kept_magnitude(torch.zeros(3), torch.zeros(3, dtype=torch.bool)) == 1.0
    with pytest.raises(WeightError, match="shape"):
        kept_magnitude(w, torch.ones(4, dtype=torch.bool))


def test_check_finite_names_layer_and_counts():
    w = torch.randn(4, 4)
    check_finite(w, "ok")
    w[0, 0], w[1, 1], w[2, 2] = float("nan"), float("inf"), float("-inf")
    with pytest.raises(WeightError, match=r"'encoder\.layer\.3\.fc1\.weight'.*1 NaN and 2 Inf"):
        check_finite(w, "encoder.layer.3.fc1.weight")
    check_finite(torch.ones(3, dtype=torch.int64), "ints")


def test_sparsity_of():
    assert sparsity_of(torch.tensor([0.0, 1.0, 0.0, 2.0])) == 0.5
    assert sparsity_of(torch.empty(0)) == 0.0
    assert sparsity_of(torch.tensor([True, False])) == 0.5


def test_compute_mask_dispatch():
    w = torch.randn(8, 16)
    assert torch.equal(compute_mask(w, Unstructured(sparsity=0.7), axis=1), unstructured_mask(w, 0.7))
    assert torch.equal(compute_mask(w, SemiStructured(n=2, m=4), axis=1), nm_mask(w, 2, 4, axis=1))
    assert torch.equal(compute_mask(w, SemiStructured(n=1, m=4), axis=0), nm_mask(w, 1, 4, axis=0))
    assert torch.equal(
        compute_mask(w, SemiStructured(n=2, m=4, method="2d_greedy"), axis=1), nm_mask_2d(w, 2, 4, axis=1)
    )
    assert torch.equal(
        compute_mask(w, SemiStructured(n=2, m=4, method="2d_best"), axis=1),
        nm_mask_2d(w, 2, 4, axis=1, method="best"),
    )


def test_compute_mask_random_is_seeded_by_the_pattern():
    w = torch.randn(32, 32)
    p = Unstructured(sparsity=0.5, method="random", seed=7)
    assert torch.equal(compute_mask(w, p, axis=1), compute_mask(w, p, axis=1))
    assert not torch.equal(
        compute_mask(w, p, axis=1), compute_mask(w, Unstructured(sparsity=0.5, method="random", seed=8), axis=1)
    )
    g = torch.Generator().manual_seed(3)
    assert torch.equal(
        compute_mask(w, p, axis=1, generator=g),
        unstructured_mask(w, 0.5, method="random", generator=torch.Generator().manual_seed(3)),
    )


def test_compute_mask_refuses_global_scope_and_other_patterns():
    with pytest.raises(ConfigError, match="global_unstructured_masks"):
        compute_mask(torch.randn(4, 4), Unstructured(sparsity=0.5, scope="global"), axis=1)
    with pytest.raises(ConfigError, match="element-wise"):
        compute_mask(torch.randn(4, 4), "2:4", axis=1)  # type: ignore[arg-type]
