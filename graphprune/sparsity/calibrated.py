"""Calibrated one-shot pruning (pure tensor maths): Wanda, SparseGPT, and the exact refit of kept weights.

Layout: as everywhere in ``sparsity/``, a weight with reduction axis K is viewed as ``[R, K]`` (K last,
other axes flattened into rows; see ``_common.as_rows_by_k``). The layer computes ``y_r = Σ_j W[r, j] x_j``
over calibration inputs ``X [T, K]`` (T tokens / positions). Both methods take 2-D weights: ``[R, K]``
with ``axis=1`` (Linear) or ``[K, R]`` with ``axis=0`` (transformers Conv1D). A Conv weight
``[O, C, kh, kw]`` is a linear map on unfolded patches; view it as ``[O, kh·kw·C]`` (channels innermost,
so N:M groups are M consecutive input channels of one kernel position, TensorRT's grouping) and give the
statistics of the unfolded patches in the same column order.

Wanda (Sun et al. 2023): score ``S[r, j] = |W[r, j]| · ||X[:, j]||₂``. Unstructured: in every row
prune the ``sparsity`` fraction with the lowest score (the comparison group is one output row).
N:M: keep the N highest scores of every M consecutive K entries. Weights are not changed.

SparseGPT (Frantar & Alistarh 2023): with ``H = XᵀX`` (accumulated, scaled by 2/T), damped
``H += λ·mean(diag H)·I``, and ``U = chol(H⁻¹)ᵀ`` (upper), process columns left to right in blocks of
``B``. Inside a block, the pruning decision for column j uses ``w²/U[j,j]²`` (the OBS saliency):
unstructured — the lowest-saliency fraction of the block (all rows together); N:M — at every M-th
column choose the M−N lowest-saliency entries of the next M columns of each row. Each pruned weight's
error ``e = w/U[j,j]`` is spread over the not-yet-processed columns: ``W[:, j:] -= e · U[j, j:]``
(the OBS update), and across blocks with ``W[:, i2:] -= E · U[i1:i2, i2:]``.
Memory: one ``K×K`` matrix per layer; the calibration activations are never stored.

Refit (exact least squares over the kept weights): for a fixed mask, the kept weights of row ``r``
that minimise ``||(w - w') X||²`` (``w'`` zero outside the kept set S, P = pruned set) solve
``H_SS (w'_S - w_S) = H_SP w_P``. SparseGPT's greedy pass only moves weights to the right of the
column it prunes; the refit re-optimises every kept weight of the row jointly. Damped like SparseGPT;
solved by preconditioned conjugate gradients over all rows at once (warm-started from SparseGPT's
weights it converges in a few dozen ``[R, K] @ [K, K]`` products, ~15x faster than a Cholesky per row).

ADMM mask search (:func:`admm_prune`): see its docstring; it can move weights between the groups
SparseGPT's greedy left-to-right pass fixed early, and ends with the exact refit.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from graphprune.config import SemiStructured, Unstructured
from graphprune.errors import ConfigError, WeightError
from graphprune.sparsity._common import as_rows_by_k, check_divisible, from_rows_by_k, normalize_axis

__all__ = [
    "HessianAccumulator",
    "InputNormAccumulator",
    "admm_prune",
    "gram_output_error",
    "reconstruction_error",
    "refit_kept",
    "sparsegpt_prune",
    "wanda_mask",
    "wanda_scores",
]

log = logging.getLogger(__name__)
ElementPattern = Unstructured | SemiStructured


class InputNormAccumulator:
    """Running ``Σ_t x_tj²`` over calibration rows ``X [T, K]``; ``norm()`` is ``||X[:, j]||₂``."""

    def __init__(self, k: int, device: torch.device | str | None = None) -> None:
        self.k = k
        self.sumsq = torch.zeros(k, dtype=torch.float64, device=device)
        self.rows = 0

    @torch.no_grad()
    def add(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.k:
            raise WeightError(f"calibration rows must have shape [T, {self.k}], got {tuple(x.shape)}")
        self.sumsq += x.detach().to(torch.float64).square().sum(0)
        self.rows += x.shape[0]

    def norm(self) -> Tensor:
        return self.sumsq.sqrt().to(torch.float32)


class HessianAccumulator:
    """Running ``H = (2/T) Σ_t x_t x_tᵀ`` (``K×K``, float32) over calibration rows ``X [T, K]``."""

    def __init__(self, k: int, device: torch.device | str | None = None) -> None:
        self.k = k
        self.H = torch.zeros(k, k, dtype=torch.float32, device=device)
        self.rows = 0

    @torch.no_grad()
    def add(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.k:
            raise WeightError(f"calibration rows must have shape [T, {self.k}], got {tuple(x.shape)}")
        t = x.shape[0]
        if t == 0:
            return
        total = self.rows + t
        self.H.mul_(self.rows / total)
        xs = x.detach().to(torch.float32) * math.sqrt(2.0 / total)
        self.H.addmm_(xs.T, xs)
        self.rows = total


def _check_2d(weight: Tensor, axis: int, what: str) -> int:
    if weight.dim() != 2:
        raise WeightError(
            f"{what} takes a 2-D weight ([R, K] with axis=1 or [K, R] with axis=0), got shape {tuple(weight.shape)}; "
            "view a Conv weight [O, C, kh, kw] as [O, kh*kw*C]"
        )
    return normalize_axis(weight.shape, axis)


def _check_pattern(pattern: object) -> None:
    if not isinstance(pattern, (Unstructured, SemiStructured)):
        raise ConfigError(f"one-shot pruning takes Unstructured(...) or SemiStructured(...), got {pattern!r}")


def wanda_scores(weight: Tensor, input_norm: Tensor, *, axis: int) -> Tensor:
    """``|W| · ||X_j||₂`` broadcast along the K axis (float32, the weight's shape)."""
    axis = normalize_axis(weight.shape, axis)
    k = weight.shape[axis]
    if input_norm.shape != (k,):
        raise WeightError(
            f"Wanda input norm has shape {tuple(input_norm.shape)}, expected ({k},) (the size of K, axis {axis} "
            f"of weight {tuple(weight.shape)})"
        )
    shape = [1] * weight.dim()
    shape[axis] = k
    return weight.detach().abs().to(torch.float32) * input_norm.to(weight.device, torch.float32).reshape(shape)


def _rowwise_keep(scores2d: Tensor, sparsity: float) -> Tensor:
    """Keep-mask pruning the ``round(sparsity·K)`` lowest scores of every row (ties: lower index pruned)."""
    _, k = scores2d.shape
    n_prune = round(sparsity * k)
    keep = torch.ones_like(scores2d, dtype=torch.bool)
    if n_prune:
        idx = scores2d.sort(dim=1, stable=True).indices[:, :n_prune]
        keep.scatter_(1, idx, False)
    return keep


def wanda_mask(weight: Tensor, input_norm: Tensor, pattern: ElementPattern, *, axis: int) -> Tensor:
    """Wanda keep-mask (True = keep) for ``pattern``; see the module docstring."""
    _check_pattern(pattern)
    axis = _check_2d(weight, axis, "wanda_mask")
    scores = wanda_scores(weight, input_norm, axis=axis)
    if isinstance(pattern, SemiStructured):
        if pattern.method != "1d":
            raise ConfigError(f"Wanda supports 1-D N:M only, got method={pattern.method!r}")
        from graphprune.sparsity.semi_structured import nm_mask

        return nm_mask(scores, pattern.n, pattern.m, axis=axis)
    keep = _rowwise_keep(as_rows_by_k(scores, axis), pattern.sparsity)
    return from_rows_by_k(keep, weight.shape, axis)


def _inverse_cholesky_upper(H: Tensor, percdamp: float, name: str) -> Tensor:
    """``chol(H⁻¹)`` upper, with damping ``percdamp·mean(diag H)``; up to 4 retries with 10× damping."""
    diag_mean = float(torch.diagonal(H).mean())
    damp = percdamp * (diag_mean if diag_mean > 0 else 1.0)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for attempt in range(5):
        L, info = torch.linalg.cholesky_ex(H + damp * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info2 = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info2) == 0:
                if attempt:
                    log.info("SparseGPT %s: Hessian needed damping %.3g (x%d)", name, damp, 10**attempt)
                return U
        damp *= 10.0
    raise WeightError(
        f"SparseGPT {name}: the calibration Hessian is not positive definite even with damping {damp:.3g}; "
        "use more calibration data or a larger percdamp"
    )


@torch.no_grad()
def sparsegpt_prune(
    weight: Tensor,
    hessian: Tensor,
    pattern: ElementPattern,
    *,
    axis: int,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "weight",
) -> tuple[Tensor, Tensor]:
    """SparseGPT: returns ``(new_weight, keep_mask)`` with ``new_weight`` zero where the mask is False.

    ``hessian`` is ``XᵀX``-like, ``K×K`` with K = ``weight.shape[axis]`` (see :class:`HessianAccumulator`).
    N:M patterns must be 1-D; ``blocksize`` is rounded up to a multiple of M.
    """
    _check_pattern(pattern)
    axis = _check_2d(weight, axis, "sparsegpt_prune")
    k = weight.shape[axis]
    if hessian.shape != (k, k):
        raise WeightError(
            f"SparseGPT {name}: Hessian has shape {tuple(hessian.shape)}, expected ({k}, {k}) for weight "
            f"{tuple(weight.shape)} with K on axis {axis}"
        )
    if not (0 <= percdamp < 10):
        raise ConfigError(f"percdamp must be in [0, 10), got {percdamp!r}")
    if blocksize < 1:
        raise ConfigError(f"blocksize must be >= 1, got {blocksize!r}")
    if isinstance(pattern, SemiStructured):
        if pattern.method != "1d":
            raise ConfigError(f"SparseGPT supports 1-D N:M only, got method={pattern.method!r}")
        check_divisible(weight.shape, axis, pattern.m)
        prune_n, prune_m = pattern.m - pattern.n, pattern.m
        blocksize = -(-blocksize // prune_m) * prune_m
    else:
        prune_n, prune_m = 0, 0

    W = as_rows_by_k(weight.detach(), axis).to(torch.float32).clone()
    H = hessian.detach().to(device=W.device, dtype=torch.float32).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U = _inverse_cholesky_upper(H, percdamp, name)

    _rows, cols = W.shape
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d1 = torch.diagonal(U1)
        if prune_n == 0:
            sal = W1.square() / d1.square().reshape(1, -1)
            n_prune = round(sal.numel() * pattern.sparsity)
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
            if n_prune:
                idx = sal.flatten().sort(stable=True).indices[:n_prune]
                mask1.view(-1)[idx] = True
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            d = U1[i, i]
            if prune_n and i % prune_m == 0:
                sal = W1[:, i : i + prune_m].square() / d1[i : i + prune_m].square().reshape(1, -1)
                low = sal.topk(prune_n, dim=1, largest=False).indices
                mask1.scatter_(1, i + low, True)
            q = w.clone()
            q[mask1[:, i]] = 0.0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ U1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        if i2 < cols:
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    if not bool(torch.isfinite(W).all()):
        raise WeightError(f"SparseGPT {name}: the update produced NaN/Inf; use a larger percdamp")
    keep = ~pruned
    new_w = from_rows_by_k(W * keep, weight.shape, axis).to(weight.dtype)
    return new_w, from_rows_by_k(keep, weight.shape, axis)


def reconstruction_error(weight: Tensor, new_weight: Tensor, x: Tensor, *, axis: int = 1) -> float:
    """``||W X - W' X||_F / ||W X||_F`` for calibration rows ``x [T, K]`` (a weight viewed as ``[R, K]``)."""
    w = as_rows_by_k(weight.detach(), axis).to(torch.float64)
    w2 = as_rows_by_k(new_weight.detach(), axis).to(torch.float64)
    xs = x.detach().to(torch.float64)
    ref = xs @ w.T
    return float((ref - xs @ w2.T).norm() / ref.norm().clamp_min(1e-30))


def _damped(H: Tensor, percdamp: float) -> Tensor:
    diag_mean = float(torch.diagonal(H).mean())
    damp = percdamp * (diag_mean if diag_mean > 0 else 1.0)
    return H + damp * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)


@torch.no_grad()
def refit_kept(
    weight: Tensor,
    hessian: Tensor,
    keep: Tensor,
    *,
    axis: int,
    percdamp: float = 0.01,
    target: Tensor | None = None,
    init: Tensor | None = None,
    tol: float = 1e-3,
    max_iter: int = 60,
) -> Tensor:
    """Exact least squares over the kept weights (see the module docstring); zero where ``keep`` is False.

    Minimises ``(t - w')ᵀ H_d (t - w')`` per row with ``w'`` supported on the row's kept set, where ``t`` is
    ``target`` (default: ``weight``) and ``H_d`` is ``hessian`` damped by ``percdamp·mean(diag)``. Solved for
    all rows at once by conjugate gradients on the kept coordinates, Jacobi-preconditioned, each row with
    its own step sizes: one ``[R, K] @ [K, K]`` product per iteration, started from ``init`` (e.g.
    SparseGPT's weights; default: ``t`` on the kept set) and stopped when every row's residual is below
    ``tol`` times its right-hand side (or after ``max_iter``). float32 (float64 weights: float64).
    """
    axis = _check_2d(weight, axis, "refit_kept")
    k = weight.shape[axis]
    if hessian.shape != (k, k):
        raise WeightError(f"refit_kept: Hessian has shape {tuple(hessian.shape)}, expected ({k}, {k})")
    if keep.shape != weight.shape:
        raise WeightError(f"refit_kept: mask has shape {tuple(keep.shape)}, weight has {tuple(weight.shape)}")
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    t = target if target is not None else weight
    T = as_rows_by_k(t.detach(), axis).to(dtype)
    M = as_rows_by_k(keep.detach(), axis).to(T.device, dtype)
    H = hessian.detach().to(T.device, torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    Hd = _damped(H, percdamp).to(dtype)
    X = (as_rows_by_k(init.detach(), axis).to(dtype) if init is not None else T) * M
    B = (T @ Hd) * M  # the kept part of H t (H symmetric: rows of T @ H)
    R = B - (X @ Hd) * M
    diag = torch.diagonal(Hd).clamp_min(torch.finfo(dtype).tiny)[None, :]
    Z = R / diag
    P = Z.clone()
    rz = (R * Z).sum(1, keepdim=True)
    stop = (tol * B.norm(dim=1, keepdim=True)).clamp_min(torch.finfo(dtype).tiny)
    for _ in range(max_iter):
        if bool((R.norm(dim=1, keepdim=True) <= stop).all()):
            break
        AP = (P @ Hd) * M
        alpha = rz / (P * AP).sum(1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        X += alpha * P
        R -= alpha * AP
        Z = R / diag
        rz_new = (R * Z).sum(1, keepdim=True)
        P = Z + (rz_new / rz.clamp_min(torch.finfo(dtype).tiny)) * P
        rz = rz_new
    X = X * M
    if not bool(torch.isfinite(X).all()):
        raise WeightError("refit_kept: the solve produced NaN/Inf; use a larger percdamp")
    return from_rows_by_k(X, weight.shape, axis).to(weight.dtype)


def gram_output_error(weight: Tensor, new_weight: Tensor, hessian: Tensor, *, axis: int) -> float:
    """``||W X - W' X||_F / ||W X||_F`` from ``H ∝ XᵀX`` alone: ``sqrt(tr(Δ H Δᵀ) / tr(W H Wᵀ))`` with ``Δ = W - W'``.

    Equals :func:`reconstruction_error` on the rows ``X`` that ``H`` accumulates (any positive scale of ``H``
    cancels). 0.0 when ``W X`` is zero and nothing changed; ``inf`` when only the pruned output is nonzero.
    """
    axis = _check_2d(weight, axis, "gram_output_error")
    w = as_rows_by_k(weight.detach(), axis).to(torch.float64)
    d = w - as_rows_by_k(new_weight.detach(), axis).to(torch.float64)
    H = hessian.detach().to(w.device, torch.float64)
    num = float(((d @ H) * d).sum().clamp_min(0))
    den = float(((w @ H) * w).sum().clamp_min(0))
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return math.sqrt(num / den)


def _project(scores: Tensor, pattern: ElementPattern) -> Tensor:
    """Keep-mask of the largest ``|scores|``: N of every M along the last axis, or per row (unstructured)."""
    if isinstance(pattern, SemiStructured):
        r, k = scores.shape
        g = scores.abs().reshape(r, k // pattern.m, pattern.m)
        idx = g.topk(pattern.n, dim=-1).indices
        keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
        return keep.reshape(r, k)
    return _rowwise_keep(scores.abs(), pattern.sparsity)


@torch.no_grad()
def admm_prune(
    weight: Tensor,
    hessian: Tensor,
    pattern: ElementPattern,
    *,
    axis: int,
    iterations: int = 30,
    rho: float = 0.1,
    rho_growth: float = 1.3,
    percdamp: float = 0.01,
    init_keep: Tensor | None = None,
    name: str = "weight",
) -> tuple[Tensor, Tensor]:
    """Mask search by ADMM on ``||(W - W') X||²`` (Boža 2024), then the exact refit; returns ``(new_weight, keep)``.

    Works in coordinates where ``H`` has a unit diagonal (columns scaled by ``sqrt(diag H)``), so the
    projection onto the pattern keeps the largest Wanda-like scores. Iterates
    ``W ← (W₀ H + ρ (Z − U)) (H + ρI)⁻¹``, ``Z ← proj(W + U)``, ``U ← U + W − Z`` with ``ρ`` (relative to
    the unit diagonal) growing by ``rho_growth`` each step, so ``W`` is pulled onto the pattern while the
    mask can still change. ``init_keep`` starts ``Z`` from a given mask (e.g. SparseGPT's). The final mask
    is ``Z``'s support; the kept weights are then solved exactly (:func:`refit_kept`).
    """
    _check_pattern(pattern)
    axis = _check_2d(weight, axis, "admm_prune")
    k = weight.shape[axis]
    if hessian.shape != (k, k):
        raise WeightError(f"ADMM {name}: Hessian has shape {tuple(hessian.shape)}, expected ({k}, {k})")
    if isinstance(pattern, SemiStructured):
        if pattern.method != "1d":
            raise ConfigError(f"ADMM supports 1-D N:M only, got method={pattern.method!r}")
        check_divisible(weight.shape, axis, pattern.m)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    W0 = as_rows_by_k(weight.detach(), axis).to(dtype)
    H = hessian.detach().to(W0.device, torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    Hd = _damped(H, percdamp)
    d = torch.diagonal(Hd).sqrt()
    Hn = Hd / d[:, None] / d[None, :]
    evals, Q = torch.linalg.eigh(Hn)
    evals, Q, d, Hn = evals.clamp_min(0).to(dtype), Q.to(dtype), d.to(dtype), Hn.to(dtype)
    W0n = W0 * d[None, :]
    target = W0n @ Hn  # W₀ H (normalized)
    if init_keep is not None:
        Z = W0n * as_rows_by_k(init_keep, axis).to(W0.device, dtype)
    else:
        Z = W0n * _project(W0n, pattern)
    U = torch.zeros_like(W0n)
    r = rho
    for _ in range(iterations):
        W = ((target + r * (Z - U)) @ Q) / (evals + r)[None, :] @ Q.T
        Z = W + U
        Z = Z * _project(Z, pattern)
        U = U + W - Z
        r *= rho_growth
    keep_rows = _project(Z, pattern)
    keep = from_rows_by_k(keep_rows, weight.shape, axis)
    start = from_rows_by_k(Z / d[None, :] * keep_rows, weight.shape, axis)
    new_w = refit_kept(weight, hessian, keep, axis=axis, percdamp=percdamp, init=start)
    return new_w, keep
