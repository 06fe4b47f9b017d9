"""Calibrated one-shot pruning for compile and the training side.

Passes (registered): ``calibration-data`` (:mod:`.data`: load and check the data before any work),
``calibrate`` (:mod:`.calibrate`: Wanda / SparseGPT masks for the sites compile prunes), ``apply-plan``
(:mod:`.apply_plan`: a saved training-side plan instead of computed masks) and ``accuracy-budget``
(:mod:`.budget`: leave the most sensitive layers dense until fidelity to the dense model meets a budget).
:mod:`.stages` builds them from compile's options. The maths runs in one layer-by-layer driver
(:mod:`.driver`: :func:`prune_layers`, :class:`CalibrateOptions`), which ``prune_oneshot`` runs too.
"""

from graphprune.passes.calibrate.apply_plan import PlanOptions, apply_plan, check_plan
from graphprune.passes.calibrate.batches import check_batches, materialize
from graphprune.passes.calibrate.budget import (
    BudgetOptions,
    BudgetResult,
    BudgetSearch,
    accuracy_budget,
    check_budget,
    fit_accuracy_budget,
)
from graphprune.passes.calibrate.calibrate import (
    CalibrateStage,
    calibrate,
    check_calibratable,
    choose_method,
    layer_errors,
    prune_sites,
    targets_of,
)
from graphprune.passes.calibrate.data import CompileData, DataOptions, calibration_data, prepare_sources
from graphprune.passes.calibrate.driver import METHODS, CalibrateOptions, prune_layers
from graphprune.passes.calibrate.stages import calibrate_permutes, data_stage, fidelity_stage, mask_stage

__all__ = [
    "METHODS",
    "BudgetOptions",
    "BudgetResult",
    "BudgetSearch",
    "CalibrateOptions",
    "CalibrateStage",
    "CompileData",
    "DataOptions",
    "PlanOptions",
    "accuracy_budget",
    "apply_plan",
    "calibrate",
    "calibrate_permutes",
    "calibration_data",
    "check_batches",
    "check_budget",
    "check_calibratable",
    "check_plan",
    "choose_method",
    "data_stage",
    "fidelity_stage",
    "fit_accuracy_budget",
    "layer_errors",
    "mask_stage",
    "materialize",
    "prepare_sources",
    "prune_layers",
    "prune_sites",
    "targets_of",
]
