"""Two gloo processes on CPU: masks are identical on every rank and pruned weights stay zero under DDP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
TIMEOUT_S = 120


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from graphprune.sparsity.semi_structured import nm_mask
    from graphprune.training.asp import ASP
    from graphprune.training.ddp import check_masks_identical, masks_digest

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
        ddp = nn.parallel.DistributedDataParallel(model)
        with torch.no_grad():  # ranks drift apart (as rounding would): local masks would now differ
            g = torch.Generator().manual_seed(100 + rank)
            for p in model.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        local = {n: nm_mask(p.detach(), 2, 4, axis=1) for n, p in model.named_parameters() if p.dim() == 2}
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        asp = ASP(ddp)
        asp.init_optimizer_for_pruning(opt)
        asp.compute_sparse_masks()
        gathered: list[str | None] = [None] * WORLD
        dist.all_gather_object(gathered, masks_digest(local))
        after_compute = check_masks_identical(asp.masks())  # raises if ranks differ
        g = torch.Generator().manual_seed(rank)
        for _ in range(4):
            opt.zero_grad()
            ddp(torch.randn(8, 16, generator=g)).square().mean().backward()
            opt.step()
        after_train = check_masks_identical(asp.masks())
        params = dict(model.named_parameters())
        zeros_kept = all(int(torch.count_nonzero(params[k][~m])) == 0 for k, m in asp.masks().items())
        torch.save(
            {
                "local_digests_differ": gathered[0] != gathered[1],
                "after_compute": after_compute,
                "after_train": after_train,
                "zeros_kept": zeros_kept,
                "masks": {k: v.clone() for k, v in asp.masks().items()},
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(TIMEOUT_S + 30)
def test_two_gloo_ranks_end_with_identical_masks(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    ctx = mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {TIMEOUT_S}s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert r0["local_digests_differ"], "the test needs ranks whose local masks differ"
    assert r0["after_compute"] == r1["after_compute"] and r0["after_train"] == r1["after_train"]
    assert r0["zeros_kept"] and r1["zeros_kept"]
    for name, m in r0["masks"].items():
        assert torch.equal(m, r1["masks"][name]), name
