"""How fast are N:M and unstructured masks computed for every Linear weight of a BERT-base-sized model?

    python benchmarks/mask_speed.py [--reps 7] [--threads 2] [--chunk 262144] [--out FILE]

The core compiler's issue asks for all Linear weights of a BERT-base-sized model (85 M weights in
73 matrices: 12 x (4 x 768x768 + 768x3072 + 3072x768) + the pooler) masked at 2:4 in well under a
second on CPU. This script times, over exactly those shapes (random normal weights, float32):

- ``floor``: ``w.abs().amax()`` per weight: one read of every weight, the memory-traffic floor;
- ``nm_mask``: the library's :func:`graphprune.sparsity.semi_structured.nm_mask` as compile calls it;
- candidate kernels for the ``[G, M]`` group step (each wrapped the same way as ``nm_mask``):
  ``sort`` (stable descending sort, keep the first N: the library's kernel before this benchmark),
  ``topk`` (``topk`` + scatter; ties are not defined, so it is only timed), ``pairwise-twice``
  (rank of each column from M(M-1) column comparisons), and ``*-chunked`` variants that run a
  kernel over blocks of ``--chunk`` groups so the temporaries stay in cache. The library's kernel
  now is the pairwise rank with each pair compared once (M(M-1)/2 comparisons), the sort above M=8;
- the same at 4:8 and 8:16 (``nm_mask`` vs ``sort``), where the pairwise count grows as M^2;
- ``unstructured``: :func:`graphprune.sparsity.unstructured.unstructured_mask` at 50% per layer.

Every tie-defined kernel is checked equal to ``nm_mask`` before it is timed. Reported: min and
median seconds over ``--reps`` repetitions of the whole model (one warm-up first).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from graphprune.bench import cpu_model  # noqa: E402
from graphprune.sparsity._common import magnitude  # noqa: E402
from graphprune.sparsity.semi_structured import nm_mask  # noqa: E402
from graphprune.sparsity.unstructured import unstructured_mask  # noqa: E402

N, M = 2, 4
GroupKernel = Callable[[Tensor, int], Tensor]


def bert_base_linear_shapes() -> list[tuple[int, int]]:
    hidden, ffn, layers = 768, 3072, 12
    per_layer = [(hidden, hidden)] * 4 + [(ffn, hidden), (hidden, ffn)]
    return per_layer * layers + [(hidden, hidden)]


# ---- group kernels: [G, M] scores -> bool [G, M] keeping n per row -----------------------------------------
def k_sort(groups: Tensor, n: int) -> Tensor:
    order = groups.sort(dim=1, descending=True, stable=True).indices[:, :n]
    return torch.zeros(groups.shape, dtype=torch.bool).scatter_(1, order, True)


def k_topk(groups: Tensor, n: int) -> Tensor:
    idx = groups.topk(n, dim=1, sorted=False).indices
    return torch.zeros(groups.shape, dtype=torch.bool).scatter_(1, idx, True)


def k_pairwise_twice(groups: Tensor, n: int) -> Tensor:
    m = groups.shape[1]
    cols = [groups[:, i] for i in range(m)]
    keep = torch.empty(groups.shape, dtype=torch.bool)
    for i in range(m):
        rank = torch.zeros(groups.shape[0], dtype=torch.uint8)
        for j in range(m):
            if j == i:
                continue
            # j beats i: strictly larger, or equal and earlier (ties to the lower index)
            rank += (cols[j] >= cols[i]) if j < i else (cols[j] > cols[i])
        keep[:, i] = rank < n
    return keep


def chunked(kernel: GroupKernel, chunk: int) -> GroupKernel:
    def run(groups: Tensor, n: int) -> Tensor:
        out = torch.empty(groups.shape, dtype=torch.bool)
        for s in range(0, groups.shape[0], chunk):
            out[s : s + chunk] = kernel(groups[s : s + chunk], n)
        return out

    return run


def mask_with(kernel: GroupKernel, n: int = N, m: int = M) -> Callable[[Tensor], Tensor]:
    """The same wrapping as ``nm_mask`` (Linear: K is axis 1, already last)."""

    def run(w: Tensor) -> Tensor:
        moved = magnitude(w)
        return kernel(moved.reshape(-1, m), n).reshape(moved.shape)

    return run


def time_all(fn: Callable[[Tensor], object], weights: list[Tensor], reps: int) -> list[float]:
    for w in weights:  # warm-up
        fn(w)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for w in weights:
            fn(w)
        out.append(time.perf_counter() - t0)
    return out


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=1 << 18, help="groups per block in the *-chunked kernels")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(o, i, generator=gen) for o, i in bert_base_linear_shapes()]
    n_weights = sum(w.numel() for w in weights)

    candidates: dict[str, Callable[[Tensor], object]] = {
        "floor: abs().amax()": lambda w: w.abs().amax(),
        "nm_mask (library)": lambda w: nm_mask(w, N, M, axis=1),
        "sort": mask_with(k_sort),
        "sort-chunked": mask_with(chunked(k_sort, args.chunk)),
        "topk (ties undefined)": mask_with(k_topk),
        "pairwise-twice": mask_with(k_pairwise_twice),
        "pairwise-twice-chunked": mask_with(chunked(k_pairwise_twice, args.chunk)),
        "4:8 nm_mask (library)": lambda w: nm_mask(w, 4, 8, axis=1),
        "4:8 sort": mask_with(k_sort, 4, 8),
        "8:16 nm_mask (library)": lambda w: nm_mask(w, 8, 16, axis=1),
        "8:16 sort": mask_with(k_sort, 8, 16),
        "unstructured 50% per layer": lambda w: unstructured_mask(w, 0.5),
    }
    tie_defined = {"sort", "sort-chunked", "pairwise-twice", "pairwise-twice-chunked"}
    probe = weights[:6] + [torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 0.0]])]
    for name in tie_defined:
        fn = candidates[name]
        for w in probe:
            if not torch.equal(fn(w), nm_mask(w, N, M, axis=1)):  # type: ignore[arg-type]
                raise SystemExit(f"{name} disagrees with nm_mask on a weight of shape {tuple(w.shape)}")

    rows = []
    for name, fn in candidates.items():
        ts = time_all(fn, weights, args.reps)
        rows.append((name, min(ts), statistics.median(ts)))
        print(f"{name:32s} min {min(ts):.3f} s  median {statistics.median(ts):.3f} s", flush=True)

    lines = [
        "## Mask speed: every Linear weight of a BERT-base-sized model",
        "",
        f"- command: `python benchmarks/mask_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip(),
        f"- date: {datetime.date.today().isoformat()}; machine: {machine()}; load average at the end: {os.getloadavg()[0]:.2f}",
        f"- torch {torch.__version__}, {args.threads} threads; {len(weights)} matrices, {n_weights / 1e6:.1f} M float32 weights; "
        f"{args.reps} repetitions after a warm-up; 2:4 along K (axis 1)",
        "",
        "| kernel | min s | median s |",
        "|---|---|---|",
    ] + [f"| {n} | {lo:.3f} | {med:.3f} |" for n, lo, med in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
