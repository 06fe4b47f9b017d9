"""Multi-process helpers (``torch.distributed``): keep sparsity masks identical on every rank.

Masks are computed on every rank from (nominally) identical weights, then broadcast from rank 0 —
ties and rounding can otherwise make two ranks keep different weights, after which DDP's averaged
gradients would update weights that one rank has pruned. :func:`check_masks_identical` all-gathers a
digest of the masks and raises if any rank differs (cheap enough to run after every mask update).

Launch as usual (``torchrun --nproc-per-node N train.py``); gloo (CPU) and NCCL both work. Bool
tensors travel as uint8 (not every backend reduces or broadcasts bool).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import torch

from graphprune.errors import ValidationError

__all__ = ["broadcast_tensors", "check_masks_identical", "is_distributed", "masks_digest"]


def is_distributed() -> bool:
    """True inside an initialized process group with more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Broadcast every tensor in place from rank ``src`` (a no-op outside a process group)."""
    if not is_distributed():
        return
    import torch.distributed as dist

    for t in tensors:
        if t.dtype == torch.bool:
            carrier = t.to(torch.uint8)
            dist.broadcast(carrier, src=src)
            t.copy_(carrier.bool())
        else:
            dist.broadcast(t, src=src)


def masks_digest(masks: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over (name, shape, bits) of every mask, in name order."""
    items = sorted(masks.items() if isinstance(masks, Mapping) else masks, key=lambda kv: kv[0])
    h = hashlib.sha256()
    for name, m in items:
        h.update(name.encode())
        h.update(str(tuple(m.shape)).encode())
        h.update(m.detach().to("cpu", torch.bool).contiguous().numpy().tobytes())
    return h.hexdigest()


def check_masks_identical(masks: Mapping[str, torch.Tensor]) -> str:
    """All-gather the masks' digest; raise ValidationError naming the ranks that differ. Returns the digest."""
    digest = masks_digest(masks)
    if not is_distributed():
        return digest
    import torch.distributed as dist

    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, digest)
    differ = [r for r, d in enumerate(gathered) if d != gathered[0]]
    if differ:
        raise ValidationError(f"sparsity masks differ between rank 0 and rank(s) {differ}")
    return digest
