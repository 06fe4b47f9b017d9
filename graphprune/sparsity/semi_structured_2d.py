"""2-D N:M masks (NVIDIA ASP's m4n2_2d_greedy / m4n2_2d_best).

The weight is viewed as a matrix: columns = the reduction axis K, rows = every other axis flattened
with the output axis (the first non-K axis) innermost, so for a Conv weight ``[O, I/g, kh, kw]``
the rows run over ``(kh, kw, o)`` (as ASP does: a tile spans M output channels at one kernel
position). The matrix is cut into M×M tiles; in every tile each row and each column keeps exactly
N entries. The mask is therefore N:M along K and along the output axis (a transposed weight, as the
backward pass uses, is N:M too).

``best``: the tile's flattened magnitudes times the matrix of all valid M×M patterns
(``[T, M*M] @ [M*M, P]``), argmax per tile (ties: the first pattern in enumeration order). For 2:4
there are 90 patterns; patterns are enumerated once per (N, M) and refused above
``MAX_BEST_PATTERNS`` (e.g. 4:8 would need ~1.2e11).

``greedy``: visit the tile's entries by decreasing magnitude (ties: lower flat index first) and keep
one while its row and column have room; vectorized across tiles (M*M steps). Greedy can stop short
(a row and a column each one short while every other row/column is full); a completion step then
applies the best 3-edge exchange (keep (r, c2) and (r2, c), drop (r2, c2)) until every row and
column holds exactly N. Such an exchange always exists, and each step adds one kept entry.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import Tensor

from graphprune.errors import ConfigError, WeightError
from graphprune.sparsity._common import check_nm_args, magnitude, normalize_axis

MAX_BEST_PATTERNS = 10_000
_MATMUL_CHUNK = 1 << 22  # elements of the [tiles, patterns] score matrix per chunk


def _tile_layout(shape: torch.Size, axis: int, m: int) -> tuple[list[int], int, int]:
    """(permutation to [rows..., K], R, K) with R and K checked divisible by m."""
    others = [d for d in range(len(shape)) if d != axis]
    dims = [*others[1:], *others[:1], axis]
    rows = math.prod(shape[d] for d in others)
    k = shape[axis]
    if not others or rows % m or k % m:
        raise WeightError(
            f"cannot build {m}x{m} tiles for 2-D N:M from a weight of shape {tuple(shape)} with K axis {axis}: "
            f"need K ({k}) and the product of the other axes ({rows if others else 'none'}) divisible by {m}"
        )
    return dims, rows, k


@functools.cache
def count_patterns(n: int, m: int) -> int:
    """Number of M×M 0/1 matrices with N ones in every row and column (90 for 2:4)."""

    @functools.cache
    def count(classes: tuple[int, ...]) -> int:
        # classes[j] = number of columns still needing j more ones; rows are filled one at a time
        if sum(j * c for j, c in enumerate(classes)) == 0:
            return 1
        total = 0
        for take in itertools.product(*(range(min(c, n) + 1) for c in classes[1:])):
            if sum(take) != n:
                continue
            ways = math.prod(math.comb(c, t) for c, t in zip(classes[1:], take))
            nxt = list(classes)
            for j, t in enumerate(take, start=1):
                nxt[j] -= t
                nxt[j - 1] += t
            total += ways * count(tuple(nxt))
        return total

    return count((0,) * n + (m,))


@functools.cache
def _valid_patterns(n: int, m: int) -> Tensor | None:
    """All M×M 0/1 matrices with N ones in every row and column, as bool ``[P, M*M]``; None if more
    than MAX_BEST_PATTERNS."""
    if count_patterns(n, m) > MAX_BEST_PATTERNS:
        return None
    rows = [sum(1 << c for c in comb) for comb in itertools.combinations(range(m), n)]
    found: list[tuple[int, ...]] = []

    def extend(prefix: list[int], col_counts: list[int]) -> bool:
        if len(prefix) == m:
            found.append(tuple(prefix))
            return len(found) <= MAX_BEST_PATTERNS
        rows_left = m - len(prefix)
        for r in rows:
            cols = [c for c in range(m) if r >> c & 1]
            if any(col_counts[c] >= n for c in cols):
                continue
            for c in cols:
                col_counts[c] += 1
            # every column must still be able to reach n with the rows left
            ok = all(n - cc <= rows_left - 1 for cc in col_counts)
            if ok:
                prefix.append(r)
                going = extend(prefix, col_counts)
                prefix.pop()
            else:
                going = True
            for c in cols:
                col_counts[c] -= 1
            if not going:
                return False
        return True

    if not extend([], [0] * m):
        return None
    bits = torch.tensor([[r >> c & 1 for r in p for c in range(m)] for p in found], dtype=torch.bool)
    return bits


def _best(tiles: Tensor, n: int, m: int) -> Tensor:
    patterns = _valid_patterns(n, m)
    if patterns is None:
        raise WeightError(
            f"2-D 'best' N:M for {n}:{m} would search more than {MAX_BEST_PATTERNS} {m}x{m} patterns; "
            "use method='greedy' (SemiStructured method '2d_greedy')"
        )
    pat = patterns.to(tiles.device)
    pat_f = pat.to(tiles.dtype).T  # [M*M, P]
    flat = tiles.reshape(tiles.shape[0], m * m)
    chunk = max(1, _MATMUL_CHUNK // pat.shape[0])
    choice = torch.cat([(flat[i : i + chunk] @ pat_f).argmax(1) for i in range(0, flat.shape[0], chunk)])
    return pat[choice].reshape(tiles.shape)


def _greedy(tiles: Tensor, n: int, m: int) -> Tensor:
    t = tiles.shape[0]
    flat = tiles.reshape(t, m * m)
    order = flat.sort(dim=1, descending=True, stable=True).indices
    keep = torch.zeros(t, m * m, dtype=torch.bool, device=tiles.device)
    row_n = torch.zeros(t, m, dtype=torch.long, device=tiles.device)
    col_n = torch.zeros_like(row_n)
    for step in range(m * m):
        idx = order[:, step : step + 1]
        r, c = idx // m, idx % m
        ok = (row_n.gather(1, r) < n) & (col_n.gather(1, c) < n)
        keep.scatter_(1, idx, ok)
        row_n.scatter_add_(1, r, ok.long())
        col_n.scatter_add_(1, c, ok.long())
    keep = keep.reshape(t, m, m)
    _complete(keep, tiles, n, m)
    return keep


def _complete(keep: Tensor, tiles: Tensor, n: int, m: int) -> None:
    """In place: raise every row and column of every tile to exactly n kept (see module docstring)."""
    for _ in range(m * n):
        row_short = keep.sum(2) < n
        todo = row_short.any(1).nonzero().squeeze(1)
        if todo.numel() == 0:
            return
        k, a = keep[todo], tiles[todo]
        ar = torch.arange(todo.numel(), device=keep.device)
        r = row_short[todo].int().argmax(1)
        c = (k.sum(1) < n).int().argmax(1)
        free_rc = ~k[ar, r, c]
        # exchange candidates: (r, c2) free, (r2, c2) kept, (r2, c) free
        cand = (~k[ar, r])[:, None, :] & k & (~k[ar, :, c])[:, :, None]
        gain = a[ar, r][:, None, :] + a[ar, :, c][:, :, None] - a
        gain = gain.masked_fill(~cand, -math.inf).reshape(todo.numel(), m * m)
        best = gain.argmax(1)
        has = cand.reshape(todo.numel(), m * m).any(1)
        r2, c2 = best // m, best % m
        swap = has & ~free_rc
        k[ar[free_rc], r[free_rc], c[free_rc]] = True
        s = ar[swap]
        k[s, r2[swap], c2[swap]] = False
        k[s, r[swap], c2[swap]] = True
        k[s, r2[swap], c[swap]] = True
        keep[todo] = k
        if not bool((free_rc | has).all()):  # cannot happen for a greedy (maximal) start; never loop forever
            return


def nm_mask_2d(weight: Tensor, n: int, m: int, *, axis: int, method: str = "greedy") -> Tensor:
    """Boolean keep-mask from M×M tiles with exactly ``n`` kept in every tile row and column (see the
    module docstring for the row layout). ``method``: ``"greedy"`` or ``"best"``. WeightError when K or
    the product of the other axes is not divisible by ``m``, or when ``"best"`` has too many patterns."""
    check_nm_args(n, m)
    if method not in ("greedy", "best"):
        raise ConfigError(f"2-D N:M method must be 'greedy' or 'best', got {method!r}")
    axis = normalize_axis(weight.shape, axis)
    dims, rows, k = _tile_layout(weight.shape, axis, m)
    mat = magnitude(weight).permute(dims).reshape(rows, k)
    tiles = mat.reshape(rows // m, m, k // m, m).permute(0, 2, 1, 3).reshape(-1, m, m)
    keep = _best(tiles, n, m) if method == "best" else _greedy(tiles, n, m)
    keep_mat = keep.reshape(rows // m, k // m, m, m).permute(0, 2, 1, 3).reshape(rows, k)
    permuted_shape = [weight.shape[d] for d in dims]
    inverse = sorted(range(len(dims)), key=dims.__getitem__)
    return keep_mat.reshape(permuted_shape).permute(inverse).contiguous()
