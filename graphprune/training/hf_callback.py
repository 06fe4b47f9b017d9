"""Hugging Face ``Trainer`` integration: :class:`GraphPruneCallback`.

Three modes, picked by the arguments:

- ``GraphPruneCallback()`` / ``GraphPruneCallback(mask_calculator="m4n2_1d")``: ASP. At
  ``on_train_begin`` the trainer's model is pruned (masks computed once) and its optimizer hooked
  so pruned weights stay zero while the Trainer fine-tunes.
- ``GraphPruneCallback(schedule=Cubic(...))``: gradual magnitude pruning; masks follow the schedule at
  every ``on_step_begin`` (``state.global_step``).
- ``GraphPruneCallback(pruner=movement_pruner)``: drives an existing pruner's schedule. Build the
  Trainer's optimizer from ``pruner.param_groups(...)`` (``optimizers=(opt, None)``) so scores get their
  own learning rate; add ``pruner.regularization()`` to the loss with ``compute_loss_func`` or a
  Trainer subclass for the soft / L0 methods.

``plan_dir``: at ``on_train_end`` the resulting plan is saved there. transformers is imported only by
this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from graphprune.errors import ConfigError
from graphprune.plan import Plan
from graphprune.training.asp import ASP, MaskCalculatorSpec, PruningOrderError
from graphprune.training.gradual import GradualPruner
from graphprune.training.schedules import Cubic, Iterative, OneShot

__all__ = ["GraphPruneCallback"]


class GraphPruneCallback(TrainerCallback):
    """See the module docstring."""

    def __init__(
        self,
        *,
        mask_calculator: MaskCalculatorSpec = "m4n2_1d",
        schedule: OneShot | Iterative | Cubic | None = None,
        scope: str = "layer",
        pruner: Any = None,
        plan_dir: str | Path | None = None,
        **asp_kwargs: Any,
    ) -> None:
        if pruner is not None and schedule is not None:
            raise ConfigError("give either pruner= or schedule=, not both")
        self.mask_calculator = mask_calculator
        self.schedule = schedule
        self.scope = scope
        self.pruner = pruner
        self.plan_dir = Path(plan_dir) if plan_dir is not None else None
        self.asp_kwargs = asp_kwargs
        self.asp: ASP | None = None

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        if self.pruner is not None:
            return
        if model is None or optimizer is None:
            raise PruningOrderError("GraphPruneCallback.on_train_begin needs the trainer's model and optimizer")
        if self.schedule is not None:
            self.pruner = GradualPruner(model, self.schedule, scope=self.scope, optimizer=optimizer, **self.asp_kwargs)  # type: ignore[arg-type]
            self.asp = self.pruner.asp
        else:
            self.asp = ASP(model, self.mask_calculator, **self.asp_kwargs)
            self.asp.init_optimizer_for_pruning(optimizer)
            self.asp.compute_sparse_masks()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = getattr(self.pruner, "step", None)
        if step is not None:
            step(int(state.global_step))

    def plan(self) -> Plan:
        if self.pruner is not None and hasattr(self.pruner, "to_plan"):
            return self.pruner.to_plan()
        if self.asp is None:
            raise PruningOrderError("GraphPruneCallback.plan() before training began")
        return self.asp.to_plan()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.plan_dir is not None:
            self.plan().save(self.plan_dir)
