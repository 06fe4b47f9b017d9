"""Calibrated one-shot pruning for compile and the training side.

- :func:`calibrate` (pass): Wanda / SparseGPT masks for the sites compile prunes, from calibration batches.
- :func:`apply_plan` (pass): a saved training-side :class:`~graphprune.plan.Plan` instead of computed masks.
- :func:`accuracy_budget` (pass) / :func:`fit_accuracy_budget`: leave the most sensitive layers dense
  until fidelity to the dense model meets a budget.
- :func:`choose_method`: compile's method rule (calibration data and no method: SparseGPT).
- :mod:`.stages` (:func:`prepare_sources`, :func:`mask_pass`, :func:`measure`): what ``api.py`` calls.
- :func:`prune_layers` / :class:`CalibrateOptions`: the one layer-by-layer driver (``prune_oneshot`` runs it).
"""

from graphprune.passes.calibrate.apply_plan import apply_plan, check_plan
from graphprune.passes.calibrate.batches import check_batches, materialize
from graphprune.passes.calibrate.budget import BudgetResult, accuracy_budget, check_budget, fit_accuracy_budget
from graphprune.passes.calibrate.calibrate import calibrate, check_calibratable, choose_method, layer_errors
from graphprune.passes.calibrate.driver import METHODS, CalibrateOptions, prune_layers
from graphprune.passes.calibrate.stages import CompileData, mask_pass, measure, prepare_sources, runs_permute

__all__ = [
    "METHODS",
    "BudgetResult",
    "CalibrateOptions",
    "CompileData",
    "accuracy_budget",
    "apply_plan",
    "calibrate",
    "check_batches",
    "check_budget",
    "check_calibratable",
    "check_plan",
    "choose_method",
    "fit_accuracy_budget",
    "layer_errors",
    "mask_pass",
    "materialize",
    "measure",
    "prepare_sources",
    "prune_layers",
    "runs_permute",
]
