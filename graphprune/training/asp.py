"""ASP-compatible sparse training: prune a trained model, then retrain with the masks kept.

NVIDIA's Automatic SParsity recipe is: train dense → compute N:M masks → retrain with the optimizer
keeping pruned weights at zero. This module offers the same calls, on a class instead of ASP's
process-wide singleton, so that two models can be pruned at once::

    asp = ASP(model, mask_calculator="m4n2_1d")     # == init_model_for_pruning(model, ...)
    asp.init_optimizer_for_pruning(optimizer)
    asp.compute_sparse_masks()
    ...train...
    plan = asp.to_plan()                             # hand to compile / save

or the ASP-style module functions (``prune_trained_model(model, optimizer)``,
``init_model_for_pruning``, ``init_optimizer_for_pruning``, ``compute_sparse_masks``,
``restore_pruned_weights``), which keep one :class:`ASP` per model (a weak dictionary keyed by the
model, not a singleton).

The :class:`ASP` class and its invariants (mask buffers, optimizer hooks, DDP broadcast) are in
:mod:`graphprune.training.asp_core`, the mask calculators in
:mod:`graphprune.training.mask_calculators`; this module holds the ASP-style functions and
re-exports the rest, so ``from graphprune.training.asp import ...`` is the one import to use.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from graphprune.analysis.module_sites import (
    DEFAULT_WHITELIST,
    SiteEntry,
    find_prunable_sites,
    module_k_axis,
    unwrap,
)
from graphprune.errors import ConfigError
from graphprune.training.asp_core import _INSTANCES, ASP, MASK_SUFFIX, PruningOrderError, _innermost_optimizer
from graphprune.training.asp_core import PERM_SUFFIX as PERM_SUFFIX
from graphprune.training.mask_calculators import MaskCalculator as MaskCalculator
from graphprune.training.mask_calculators import MaskCalculatorSpec, resolve_mask_calculator

__all__ = [
    "ASP",
    "DEFAULT_WHITELIST",
    "MASK_SUFFIX",
    "MaskCalculatorSpec",
    "PruningOrderError",
    "SiteEntry",
    "asp_for",
    "compute_sparse_masks",
    "find_prunable_sites",
    "init_model_for_pruning",
    "init_optimizer_for_pruning",
    "module_k_axis",
    "prune_trained_model",
    "resolve_mask_calculator",
    "restore_pruned_weights",
]


# --------------------------------------------------------------------------- ASP-style functions


def asp_for(model: nn.Module) -> ASP | None:
    """The ASP object of ``model`` (made by ``init_model_for_pruning``), or None."""
    return _INSTANCES.get(unwrap(model))


def init_model_for_pruning(model: nn.Module, mask_calculator: MaskCalculatorSpec = "m4n2_1d", **kwargs: Any) -> ASP:
    """ASP's ``init_model_for_pruning``: register mask buffers on every site; returns the :class:`ASP`."""
    return ASP(model, mask_calculator, **kwargs)


def _resolve(model: nn.Module | None, step: str) -> ASP:
    if model is not None:
        asp = asp_for(model)
        if asp is None:
            raise PruningOrderError(f"{step}() called before init_model_for_pruning(model) for this model")
        return asp
    live = list(_INSTANCES.values())
    if not live:
        raise PruningOrderError(f"{step}() called before init_model_for_pruning(model)")
    if len(live) > 1:
        raise ConfigError(f"{len(live)} models are initialized for pruning; pass model= to {step}()")
    return live[0]


def init_optimizer_for_pruning(optimizer: Any, model: nn.Module | None = None) -> ASP:
    """ASP's ``init_optimizer_for_pruning``; finds the model whose weights the optimizer holds."""
    if model is not None:
        asp = _resolve(model, "init_optimizer_for_pruning")
    else:
        live = list(_INSTANCES.values())
        if not live:
            raise PruningOrderError("init_optimizer_for_pruning() called before init_model_for_pruning(model)")
        opt = _innermost_optimizer(optimizer)
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        owners = [a for a in live if any(id(s.entry.param) in held for s in a.sites)]
        if not owners:
            names = ", ".join(type(a.model).__name__ for a in live)
            raise ConfigError(
                f"the optimizer does not hold the parameters of any model initialized for pruning ({names}); "
                "build it from model.parameters()"
            )
        if len(owners) > 1:
            raise ConfigError("the optimizer holds weights of several pruned models; pass model=")
        asp = owners[0]
    asp.init_optimizer_for_pruning(optimizer)
    return asp


def compute_sparse_masks(model: nn.Module | None = None) -> ASP:
    asp = _resolve(model, "compute_sparse_masks")
    asp.compute_sparse_masks()
    return asp


def restore_pruned_weights(model: nn.Module | None = None) -> ASP:
    asp = _resolve(model, "restore_pruned_weights")
    asp.restore_pruned_weights()
    return asp


def prune_trained_model(
    model: nn.Module, optimizer: Any, mask_calculator: MaskCalculatorSpec = "m4n2_1d", **kwargs: Any
) -> ASP:
    """ASP's one-call recipe: init the model (2:4 by default), hook the optimizer, compute the masks."""
    asp = ASP(model, mask_calculator, **kwargs)
    asp.init_optimizer_for_pruning(optimizer)
    asp.compute_sparse_masks()
    return asp
