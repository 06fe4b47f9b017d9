"""Calibrated maths (Wanda, SparseGPT, exact refit, ADMM) against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphprune.config import SemiStructured, Unstructured
from graphprune.errors import WeightError
from graphprune.sparsity.calibrated import (
    HessianAccumulator,
    InputNormAccumulator,
    admm_prune,
    gram_output_error,
    reconstruction_error,
    refit_kept,
    sparsegpt_prune,
    wanda_mask,
    wanda_scores,
)
from graphprune.sparsity.metrics import check_nm
from graphprune.sparsity.semi_structured import nm_mask


def synthetic(k: int = 64, r: int = 32, t: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated inputs whose features have very different scales (as in real activations)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.randn(k, generator=g))
    mix = torch.randn(k, k, generator=g) * 0.3 + torch.eye(k)
    x = (torch.randn(t, k, generator=g) @ mix) * scales
    return torch.randn(r, k, generator=g), x


@pytest.mark.parametrize("pattern", [SemiStructured(n=2, m=4), Unstructured(sparsity=0.5)], ids=str)
def test_sparsegpt_beats_wanda_beats_magnitude(pattern: SemiStructured | Unstructured) -> None:
    w, x = synthetic()
    hess, norms = HessianAccumulator(64), InputNormAccumulator(64)
    for chunk in x.split(100):  # accumulated in pieces, never stored
        hess.add(chunk)
        norms.add(chunk)
    torch.testing.assert_close(hess.H, 2 * x.T @ x / x.shape[0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(norms.norm(), x.norm(dim=0), rtol=1e-5, atol=1e-5)
    new_w, keep = sparsegpt_prune(w, hess.H, pattern, axis=1, blocksize=16)
    wanda = wanda_mask(w, norms.norm(), pattern, axis=1)
    magnitude = (
        nm_mask(w, 2, 4, axis=1)
        if isinstance(pattern, SemiStructured)
        else wanda_mask(w, torch.ones(64), pattern, axis=1)
    )
    e_sgpt = reconstruction_error(w, new_w, x)
    e_wanda = reconstruction_error(w, w * wanda, x)
    e_mag = reconstruction_error(w, w * magnitude, x)
    assert e_sgpt < e_wanda < e_mag, (e_sgpt, e_wanda, e_mag)
    assert torch.count_nonzero(new_w[~keep]) == 0
    for m in (keep, wanda):
        assert m.dtype == torch.bool and m.float().mean() == 0.5
    if isinstance(pattern, SemiStructured):
        assert check_nm(new_w, 2, 4, axis=1).ok and check_nm(keep, 2, 4, axis=1).ok and check_nm(wanda, 2, 4, axis=1).ok
        assert keep.reshape(32, 16, 4).sum(-1).eq(2).all()  # exactly 2 of every 4
    else:
        assert wanda.sum(1).eq(32).all()  # Wanda compares within each output row


def test_maths_on_k_axis_zero_and_errors() -> None:
    w, x = synthetic(k=32, r=16)
    hess = HessianAccumulator(32)
    hess.add(x)
    new_t, keep_t = sparsegpt_prune(w.T.contiguous(), hess.H, SemiStructured(), axis=0)  # Conv1D layout [K, R]
    new_w, keep_w = sparsegpt_prune(w, hess.H, SemiStructured(), axis=1)
    torch.testing.assert_close(new_t.T, new_w)
    assert torch.equal(keep_t.T, keep_w)
    torch.testing.assert_close(wanda_scores(w, torch.arange(32.0), axis=1), w.abs() * torch.arange(32.0))
    with pytest.raises(WeightError, match=r"Hessian has shape \(8, 8\), expected \(32, 32\)"):
        sparsegpt_prune(w, torch.eye(8), SemiStructured(), axis=1)
    with pytest.raises(WeightError, match="2-D weight"):
        wanda_mask(torch.ones(2, 4, 3, 3), torch.ones(4), SemiStructured(), axis=1)
    with pytest.raises(WeightError, match=r"calibration rows must have shape \[T, 32\]"):
        hess.add(torch.ones(3, 31))


def np_masked_lstsq(x: np.ndarray, target_out: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per row r: the weights on keep[r] that best reproduce target_out[:, r] from the rows of x (numpy lstsq)."""
    out = np.zeros((keep.shape[0], x.shape[1]))
    for r in range(keep.shape[0]):
        s = keep[r]
        out[r, s] = np.linalg.lstsq(x[:, s], target_out[:, r], rcond=None)[0]
    return out


@pytest.mark.parametrize("pattern", [SemiStructured(n=2, m=4), Unstructured(sparsity=0.6)], ids=str)
def test_refit_is_the_least_squares_solution(pattern: SemiStructured | Unstructured) -> None:
    w, x = synthetic(k=32, r=12, t=400)
    w, x = w.double(), x.double()
    hess = HessianAccumulator(32)
    hess.add(x)
    _, keep = sparsegpt_prune(w, hess.H, pattern, axis=1)
    want = np_masked_lstsq(x.numpy(), (x @ w.T).numpy(), keep.numpy())
    got = refit_kept(w, hess.H.double(), keep, axis=1, percdamp=0.0, tol=1e-10, max_iter=500)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(got[~keep]) == 0
    # K on axis 0 (transformers Conv1D layout) gives the transpose
    got_t = refit_kept(w.T.contiguous(), hess.H.double(), keep.T.contiguous(), axis=0, percdamp=0.0, tol=1e-10, max_iter=500)
    np.testing.assert_allclose(got_t.T.numpy(), want, rtol=1e-5, atol=1e-6)
    # never worse than SparseGPT's own update for the same mask, on the calibration rows
    new, _ = sparsegpt_prune(w, hess.H, pattern, axis=1)
    assert reconstruction_error(w, got, x) <= reconstruction_error(w, new, x) + 1e-9


def test_gram_output_error_is_the_reconstruction_error() -> None:
    w, x = synthetic(k=24, r=10, t=200)
    hess = HessianAccumulator(24)
    hess.add(x)
    w2 = w * nm_mask(w, 2, 4, axis=1)
    assert gram_output_error(w, w2, hess.H, axis=1) == pytest.approx(reconstruction_error(w, w2, x), rel=1e-5)
    # by hand: ||(W - W') X^T||_F / ||W X^T||_F
    xn, wn, w2n = x.double().numpy(), w.double().numpy(), w2.double().numpy()
    by_hand = np.linalg.norm(xn @ (wn - w2n).T) / np.linalg.norm(xn @ wn.T)
    assert gram_output_error(w, w2, hess.H, axis=1) == pytest.approx(by_hand, rel=1e-5)
    assert gram_output_error(w, w, hess.H, axis=1) == 0.0


def test_admm_keeps_the_pattern_and_beats_sparsegpt() -> None:
    w, x = synthetic(k=64, r=32, t=512)
    hess = HessianAccumulator(64)
    hess.add(x)
    new, keep = sparsegpt_prune(w, hess.H, SemiStructured(), axis=1)
    ad, akeep = admm_prune(w, hess.H, SemiStructured(), axis=1, init_keep=keep)
    assert check_nm(akeep, 2, 4, axis=1).ok and akeep.reshape(32, 16, 4).sum(-1).eq(2).all()
    assert torch.count_nonzero(ad[~akeep]) == 0
    e_admm, e_sgpt = reconstruction_error(w, ad, x), reconstruction_error(w, new, x)
    assert e_admm < 0.9 * e_sgpt, (e_admm, e_sgpt)
    _, ukeep = admm_prune(w, hess.H, Unstructured(sparsity=0.5), axis=1)
    assert ukeep.sum(1).eq(32).all()  # per row, like Wanda
