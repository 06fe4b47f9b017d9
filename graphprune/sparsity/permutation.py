"""Channel permutation search for N:M sparsity (the idea of NVIDIA apex ASP's permutation search,
our own vectorized code).

Problem: ``W`` viewed as ``A = |W|`` of shape ``[R, K]`` (K = reduction axis, other axes flattened
into rows). A permutation ``perm`` of K reorders the columns (``W.index_select(K, perm)``); the
1-D N:M mask then keeps, in every row and every *stripe* of M consecutive permuted columns, the N
largest. Maximise the kept magnitude ``Σ_stripes f(S)``, ``f(S) = Σ_r topN(A[r, S])``. A layer's
outputs are unchanged if its producers' output channels are permuted the same way (see
``analysis`` groups), so the gain is free at inference time.

Method:

1. *Greedy stripe dealing.* Channels sorted by column L1 norm are dealt in M rounds of one channel
   per stripe. In round j each channel goes to the open stripe where it adds the least pruned mass,
   using the proxy "keep ceil(N(j+1)/M) of the j+1 members per row" (so two channels large in the
   same rows avoid each other). Round 0, and every channel once 40% of the budget is spent, is dealt
   in snake order. The result replaces the identity only if it keeps more.
2. *Swap refinement.* For a swap of channel p (stripe a) with q (stripe b), with ``T[p] = Σ_r`` top-N
   of stripe a without p and ``O[r, p]`` the N-th largest of stripe a without p in row r:
   ``f(a - p + q) = T[p] + Σ_r relu(A[r, q] - O[r, p])``. So every candidate swap in a block of stripes
   is scored at once from ``H[p, q] = Σ_r relu(A[r, q] - O[r, p])`` (a ``[P, P]`` reduction, chunked).
   Improving swaps touching disjoint stripes are applied together, each re-checked exactly (float64)
   and undone if it does not improve. Stripes are visited in blocks of at most ``_MAX_UNION``
   channels (random block order from ``seed``) until a full sweep makes no swap or the time budget
   ends.

Guarantees: ``perm`` is a permutation of ``range(K)``; ``kept_after >= kept_before``; the identity is
returned when nothing strictly better is found, including when ``time_budget_s == 0``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from graphprune.errors import ConfigError
from graphprune.sparsity._common import as_rows_by_k, check_divisible, check_nm_args, magnitude, normalize_axis

_MAX_UNION = 256  # channels scored together in one refinement round
_CHUNK = 1 << 22  # elements of the [R, chunk, P] relu temporary
_GREEDY_SHARE = 0.4  # fraction of the budget the greedy dealing may use


@dataclass(frozen=True)
class PermutationResult:
    """``perm``: LongTensor over the K axis (``weight.index_select(axis, perm)``); ``kept_before`` /
    ``kept_after``: kept magnitude fraction of the 1-D N:M mask without / with it; ``iterations``:
    refinement rounds run (each scores every swap within one block of stripes)."""

    perm: Tensor
    kept_before: float
    kept_after: float
    seconds: float
    iterations: int


def _stripe_kept(ap: Tensor, n: int, m: int) -> Tensor:
    """Per-stripe kept magnitude ``[S]`` (float64) of columns already in permuted order."""
    r, k = ap.shape
    return ap.reshape(r, k // m, m).topk(n, dim=-1).values.sum(dim=(0, 2), dtype=torch.float64)


def _kept_rows(vals: Tensor, keep: int) -> Tensor:
    """``vals [R, S, j]`` -> ``[S]``: Σ_r of the ``keep`` largest of each row (float64)."""
    return vals.topk(keep, dim=-1).values.sum(dim=(0, 2), dtype=torch.float64)


def _greedy_deal(a: Tensor, n: int, m: int, deadline: float) -> Tensor:
    r, k = a.shape
    s = k // m
    dev = a.device
    order = a.sum(0).argsort(descending=True, stable=True)
    members = torch.empty(s, m, dtype=torch.long, device=dev)
    vals = torch.empty(r, s, m, dtype=a.dtype, device=dev)
    col_tot = a.sum(0, dtype=torch.float64)
    part_tot = torch.zeros(s, dtype=torch.float64, device=dev)  # Σ of the members so far
    pruned = torch.zeros(s, dtype=torch.float64, device=dev)  # proxy pruned mass so far
    for j in range(m):
        chunk = order[j * s : (j + 1) * s]
        snake = torch.arange(s, device=dev) if j % 2 == 0 else torch.arange(s - 1, -1, -1, device=dev)
        open_ = torch.ones(s, dtype=torch.bool, device=dev)
        keep_j = math.ceil(n * (j + 1) / m)
        for i, ch in enumerate(chunk.tolist()):
            if j == 0 or time.perf_counter() > deadline:  # deal the rest of the round in snake order
                rest, targets = chunk[i:], snake[open_[snake]]
                members[targets, j] = rest
                vals[:, targets, j] = a[:, rest]
                part_tot[targets] += col_tot[rest]
                pruned[targets] = part_tot[targets] - _kept_rows(vals[:, targets, : j + 1], keep_j)
                break
            cand = open_.nonzero().squeeze(1)
            x = a[:, ch]
            both = torch.cat([vals[:, cand, :j], x[:, None, None].expand(r, cand.numel(), 1)], dim=-1)
            new_pruned = part_tot[cand] + col_tot[ch] - _kept_rows(both, keep_j)
            best = int(torch.argmin(new_pruned - pruned[cand]))
            st = int(cand[best])
            members[st, j] = ch
            vals[:, st, j] = x
            part_tot[st] += col_tot[ch]
            pruned[st] = new_pruned[best]
            open_[st] = False
    return members.reshape(-1)


class _Refiner:
    def __init__(self, a: Tensor, perm: Tensor, n: int, m: int, deadline: float, seed: int, pbar: Any) -> None:
        self.n, self.m, self.deadline, self.pbar = n, m, deadline, pbar
        self.perm = perm.clone()
        self.ap = a[:, perm].contiguous()
        self.f = _stripe_kept(self.ap, n, m)
        self.total = float(a.sum(dtype=torch.float64))
        self.gen = torch.Generator().manual_seed(seed)
        idx = torch.arange(m)
        self.excl = torch.stack([idx[idx != i] for i in range(m)]).to(a.device)  # [m, m-1]
        self.iterations = 0

    def run(self) -> None:
        s = self.f.numel()
        per_block = s if s * self.m <= _MAX_UNION else max(1, _MAX_UNION // (2 * self.m))
        while True:
            blocks = torch.randperm(s, generator=self.gen).to(self.ap.device).split(per_block)
            nb = len(blocks)
            pairs = [(0, 0)] if nb == 1 else [(i, j) for i in range(nb) for j in range(i + 1, nb)]
            swaps = 0
            for i, j in pairs:
                if time.perf_counter() >= self.deadline:
                    return
                stripes = blocks[i] if i == j else torch.cat([blocks[i], blocks[j]])
                swaps += self._round(stripes)
                self.iterations += 1
                self.pbar.update(1)
                self.pbar.set_postfix(kept=f"{float(self.f.sum()) / self.total:.4f}", refresh=False)
            if swaps == 0:
                return

    def _round(self, stripes: Tensor) -> int:
        n, m = self.n, self.m
        r = self.ap.shape[0]
        pos = (stripes[:, None] * m + torch.arange(m, device=stripes.device)).reshape(-1)
        p = pos.numel()
        x = self.ap[:, pos]  # [R, P]
        top = x.reshape(r, -1, m)[:, :, self.excl].topk(n, dim=-1).values  # [R, s, m, n]
        t = top.sum(-1).sum(0, dtype=torch.float64).reshape(p)
        o = top[..., -1].reshape(r, p)
        h = torch.empty(p, p, dtype=torch.float64, device=x.device)
        step = max(1, _CHUNK // max(1, r * p))
        for c in range(0, p, step):
            h[c : c + step] = (x[:, None, :] - o[:, c : c + step, None]).clamp_min_(0).sum(0, dtype=torch.float64)
        base = t - self.f[stripes].repeat_interleave(m)
        gain = base[:, None] + base[None, :] + h + h.T
        local = torch.arange(p, device=x.device) // m
        gain.masked_fill_(local[:, None] >= local[None, :], -math.inf)  # one of each pair, other stripes only
        tol = 1e-7 * float(self.f[stripes].mean()) + 1e-30
        n_pos = int((gain > tol).sum())
        if n_pos == 0:
            return 0
        flat = gain.reshape(-1).topk(min(n_pos, 4 * p)).indices
        used: set[int] = set()
        chosen: list[tuple[int, int]] = []
        for pq in flat.tolist():
            pi, qi = divmod(pq, p)
            sa, sb = pi // m, qi // m
            if sa in used or sb in used:
                continue
            used.update((sa, sb))
            chosen.append((int(pos[pi]), int(pos[qi])))
        return self._apply(chosen)

    def _apply(self, chosen: list[tuple[int, int]]) -> int:
        m = self.m
        gp = torch.tensor([c[0] for c in chosen], device=self.ap.device)
        gq = torch.tensor([c[1] for c in chosen], device=self.ap.device)
        sa, sb = gp // m, gq // m
        old = self.f[sa] + self.f[sb]
        self._swap(gp, gq)
        touched = torch.cat([sa, sb])
        cols = (touched[:, None] * m + torch.arange(m, device=touched.device)).reshape(-1)
        new_f = _stripe_kept(self.ap[:, cols], self.n, m)
        k = sa.numel()
        worse = (new_f[:k] + new_f[k:]) <= old
        if bool(worse.any()):  # float noise in the scored gain: undo those swaps
            self._swap(gp[worse], gq[worse])
            keep = torch.cat([~worse, ~worse])
            touched, new_f = touched[keep], new_f[keep]
        self.f[touched] = new_f
        return int((~worse).sum())

    def _swap(self, gp: Tensor, gq: Tensor) -> None:
        self.perm[gp], self.perm[gq] = self.perm[gq].clone(), self.perm[gp].clone()
        self.ap[:, gp], self.ap[:, gq] = self.ap[:, gq].clone(), self.ap[:, gp].clone()


def search_permutation(
    weight: Tensor,
    n: int,
    m: int,
    *,
    axis: int = 1,
    time_budget_s: float = 5.0,
    seed: int = 0,
    progress: bool = False,
) -> PermutationResult:
    """Search a permutation of ``weight``'s K axis (``axis``) that raises the magnitude kept by the 1-D
    N:M mask. Stops when a full sweep finds no improving swap or after ``time_budget_s`` seconds
    (0 returns the identity). Shows a tqdm bar when ``progress``. WeightError when
    ``weight.shape[axis] % m != 0``. See the module docstring for the method."""
    start = time.perf_counter()
    check_nm_args(n, m)
    if isinstance(time_budget_s, bool) or not isinstance(time_budget_s, (int, float)) or not time_budget_s >= 0:
        raise ConfigError(f"time_budget_s must be a number >= 0 (seconds), got {time_budget_s!r}")
    axis = normalize_axis(weight.shape, axis)
    check_divisible(weight.shape, axis, m, what="N:M channel permutation")
    a = as_rows_by_k(magnitude(weight), axis).to(torch.float32).contiguous()
    k = a.shape[1]
    identity = torch.arange(k, device=weight.device)
    total = float(a.sum(dtype=torch.float64))
    before = float(_stripe_kept(a, n, m).sum()) / total if total > 0 else 1.0

    def result(perm: Tensor, after: float, iterations: int) -> PermutationResult:
        return PermutationResult(perm, before, after, time.perf_counter() - start, iterations)

    if time_budget_s == 0 or total == 0 or k <= m or a.shape[0] == 0:
        return result(identity, before, 0)
    deadline = start + time_budget_s
    perm = _greedy_deal(a, n, m, start + _GREEDY_SHARE * time_budget_s)
    if float(_stripe_kept(a[:, perm], n, m).sum()) <= before * total:
        perm = identity
    from tqdm.auto import tqdm

    with tqdm(desc=f"{n}:{m} permutation search", unit="round", disable=not progress, leave=False) as pbar:
        refiner = _Refiner(a, perm, n, m, deadline, seed, pbar)
        refiner.run()
    after = float(_stripe_kept(a[:, refiner.perm], n, m).sum()) / total
    if after <= before:
        return result(identity, before, refiner.iterations)
    return result(refiner.perm, after, refiner.iterations)
