"""Contrastive recovery losses of CAP (Xu et al. 2021, "From Dense to Sparse: Contrastive Pruning").

The pruned model's representation ``z_i`` of example ``i`` (the anchor) is pulled towards the
representations of *positives* and pushed from *negatives*, with InfoNCE at temperature τ::

    L_i = −1/|P(i)| Σ_{p∈P(i)} log( exp(sim(z_i, c_p)/τ) / Σ_{k∈C} exp(sim(z_i, c_k)/τ) )

``sim`` is cosine similarity. The candidates ``C`` are the representations of the current batch by
the *views* — the pre-trained model (PrC), earlier snapshots of the model being pruned (SnC), the
fine-tuned teacher (FiC), and optionally the student itself (other examples only) — plus a bounded
queue of representations from recent batches (:class:`RepresentationQueue`, FIFO with a fixed size,
so memory does not grow with the training set). Positives: the same example in every view
(unsupervised) and, with labels (supervised), every candidate with the same label.

:class:`Snapshots` keeps at most ``max_snapshots`` frozen copies of the model for SnC.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from graphprune.errors import ConfigError, InputError

__all__ = ["ContrastiveLoss", "RepresentationQueue", "Snapshots", "info_nce"]


def info_nce(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    positives: torch.Tensor,
    temperature: float = 0.1,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE with several positives per anchor.

    ``anchors [B, D]``, ``candidates [N, D]``, ``positives [B, N]`` bool; ``exclude [B, N]`` bool removes
    candidates from the denominator (e.g. the anchor itself). Anchors without a positive are ignored.
    """
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    if anchors.dim() != 2 or candidates.dim() != 2 or anchors.shape[1] != candidates.shape[1]:
        raise InputError(
            f"info_nce needs anchors [B, D] and candidates [N, D], got {tuple(anchors.shape)} and {tuple(candidates.shape)}"
        )
    if positives.shape != (anchors.shape[0], candidates.shape[0]):
        raise InputError(
            f"positives must be [B, N] = {(anchors.shape[0], candidates.shape[0])}, got {tuple(positives.shape)}"
        )
    a = F.normalize(anchors.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    logits = a @ c.T / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
        positives = positives & ~exclude
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = positives.float()
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return anchors.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~positives, 0.0) * pos).sum(1)[has] / n_pos[has]
    return per_anchor.mean()


class RepresentationQueue:
    """A FIFO of the ``size`` most recent representations (detached) and their labels."""

    def __init__(self, size: int, dim: int) -> None:
        if size < 0:
            raise ConfigError(f"queue size must be >= 0, got {size!r}")
        self.size, self.dim = int(size), int(dim)
        self.reps = torch.zeros(0, dim)
        self.labels = torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return self.reps.shape[0]

    @torch.no_grad()
    def push(self, reps: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        if reps.dim() != 2 or reps.shape[1] != self.dim:
            raise InputError(f"queue holds [*, {self.dim}] representations, got {tuple(reps.shape)}")
        if self.size == 0:
            return
        lab = labels.detach().long() if labels is not None else torch.full((reps.shape[0],), -1, dtype=torch.long)
        self.reps = torch.cat([self.reps.to(reps.device), reps.detach().float()])[-self.size :]
        self.labels = torch.cat([self.labels.to(lab.device), lab])[-self.size :]


class Snapshots:
    """At most ``max_snapshots`` frozen (eval, no-grad) copies of a model, oldest dropped first."""

    def __init__(self, max_snapshots: int = 2) -> None:
        if max_snapshots < 1:
            raise ConfigError(f"max_snapshots must be >= 1, got {max_snapshots!r}")
        self.models: deque[nn.Module] = deque(maxlen=max_snapshots)

    def take(self, model: nn.Module) -> nn.Module:
        snap = copy.deepcopy(model).eval()
        for p in snap.parameters():
            p.requires_grad_(False)
        self.models.append(snap)
        return snap

    def __iter__(self):
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)


@dataclass
class ContrastiveLoss:
    """CAP's contrastive loss with a bounded queue; see the module docstring.

    Call with the student's representations ``[B, D]``, a mapping of view name -> ``[B, D]``
    (pre-trained / snapshot / teacher representations of the same batch, computed under no_grad)
    and optional labels ``[B]`` (supervised positives). Each call then pushes the views'
    representations into the queue.
    """

    temperature: float = 0.1
    queue_size: int = 1024
    supervised: bool = True
    include_student: bool = True

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"ContrastiveLoss.temperature must be > 0, got {self.temperature!r}")
        if self.queue_size < 0:
            raise ConfigError(f"ContrastiveLoss.queue_size must be >= 0, got {self.queue_size!r}")
        self.queue: RepresentationQueue | None = None

    def __call__(
        self, student: torch.Tensor, views: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if student.dim() != 2:
            raise InputError(f"student representations must be [B, D], got {tuple(student.shape)}")
        b, d = student.shape
        for name, v in views.items():
            if tuple(v.shape) != (b, d):
                raise InputError(f"view {name!r} has shape {tuple(v.shape)}, the student's is {(b, d)}")
        if labels is not None and labels.shape != (b,):
            raise InputError(f"labels must be [B] = ({b},), got {tuple(labels.shape)}")
        if self.queue is None:
            self.queue = RepresentationQueue(self.queue_size, d)
        dev = student.device
        idx = torch.arange(b, device=dev)
        lab = labels.to(dev).long() if labels is not None else torch.full((b,), -1, dtype=torch.long, device=dev)
        cands, cand_idx, cand_lab, is_self = [], [], [], []
        for v in views.values():
            cands.append(v.detach())
            cand_idx.append(idx)
            cand_lab.append(lab)
            is_self.append(torch.zeros(b, dtype=torch.bool, device=dev))
        if self.include_student:
            cands.append(student)  # gradients flow through both sides here, as in SimCLR
            cand_idx.append(idx)
            cand_lab.append(lab)
            is_self.append(torch.ones(b, dtype=torch.bool, device=dev))
        if len(self.queue):
            q = len(self.queue)
            cands.append(self.queue.reps.to(dev))
            cand_idx.append(torch.full((q,), -1, dtype=torch.long, device=dev))
            cand_lab.append(self.queue.labels.to(dev))
            is_self.append(torch.zeros(q, dtype=torch.bool, device=dev))
        if not cands:
            raise InputError("ContrastiveLoss needs at least one view or include_student=True")
        C = torch.cat(cands)
        ci, cl, cs = torch.cat(cand_idx), torch.cat(cand_lab), torch.cat(is_self)
        same_example = idx[:, None] == ci[None, :]
        positives = same_example.clone()
        if self.supervised and labels is not None:
            positives |= (lab[:, None] == cl[None, :]) & (cl[None, :] >= 0)
        exclude = same_example & cs[None, :]  # the anchor itself
        loss = info_nce(student, C, positives, self.temperature, exclude=exclude)
        for v in views.values():
            self.queue.push(v, labels)
        return loss
