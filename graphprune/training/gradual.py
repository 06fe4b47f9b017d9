"""Gradual magnitude pruning driven by a schedule (Zhu & Gupta's AGP, iterative, one-shot).

``GradualPruner(model, Cubic(final=0.9, start_step=..., end_step=..., frequency=...))``: call
``pruner.step(step)`` before each training step (or use it as a callback of
:func:`graphprune.training.loop.train` / the HF callback). At every step where the schedule's
sparsity changes, masks are recomputed by magnitude from the current weights — per layer
(``scope="layer"``) or with one threshold over all sites (``scope="global"``). Pruned weights are
held at zero by the optimizer hooks of :class:`~graphprune.training.asp.ASP`, so a pruned weight has
the smallest magnitude at the next update and masks only grow.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from graphprune.config import Unstructured
from graphprune.errors import ConfigError
from graphprune.plan import Plan
from graphprune.training.asp import ASP
from graphprune.training.schedules import Cubic, Iterative, OneShot

__all__ = ["GradualPruner"]


class GradualPruner:
    """Magnitude pruning to a schedule; see the module docstring.

    Args:
        model: the model, or an existing :class:`ASP` (its sites and masks are used).
        schedule: a :mod:`~graphprune.training.schedules` object.
        scope: ``"layer"`` (each weight pruned to the target) or ``"global"`` (one threshold).
        optimizer: if given, hooked with ``init_optimizer_for_pruning``.
        **asp_kwargs: site filters for a new ASP (whitelist, allowed/disallowed_layer_names, ...).
    """

    def __init__(
        self,
        model: nn.Module | ASP,
        schedule: OneShot | Iterative | Cubic,
        *,
        scope: Literal["layer", "global"] = "layer",
        optimizer: Any = None,
        **asp_kwargs: Any,
    ) -> None:
        if not isinstance(schedule, (OneShot, Iterative, Cubic)):
            raise ConfigError(f"schedule must be OneShot, Iterative or Cubic, got {schedule!r}")
        if scope not in ("layer", "global"):
            raise ConfigError(f"GradualPruner.scope must be 'layer' or 'global', got {scope!r}")
        self.asp = model if isinstance(model, ASP) else ASP(model, Unstructured(sparsity=0.0), **asp_kwargs)
        self.schedule = schedule
        self.scope = scope
        self.current = 0.0
        if optimizer is not None:
            self.asp.init_optimizer_for_pruning(optimizer)

    def step(self, step: int) -> float:
        """Update the masks if the schedule's sparsity changed at or before ``step``; return it."""
        target = self.schedule.sparsity_at(step)
        if target != self.current:
            self.prune_to(target)
        return target

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        if self.scope == "layer":
            self.asp.compute_sparse_masks(Unstructured(sparsity=sparsity))
        else:
            from graphprune.sparsity.unstructured import global_unstructured_masks

            weights = {s.fqn: s.entry.param.detach() for s in self.asp.sites}
            self.asp.set_masks(global_unstructured_masks(weights, sparsity))
        self.current = sparsity

    # callback protocol of graphprune.training.loop.train
    def on_step_begin(self, step: int) -> None:
        self.step(step)

    def sparsity(self) -> float:
        """Measured fraction of zeros over the pruned weights."""
        total = sum(s.entry.param.numel() for s in self.asp.sites)
        zeros = sum(int((s.entry.param == 0).sum()) for s in self.asp.sites)
        return zeros / total if total else 0.0

    def to_plan(self) -> Plan:
        return self.asp.to_plan()
