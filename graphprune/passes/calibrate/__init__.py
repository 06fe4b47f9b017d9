"""Calibrated one-shot pruning for compile and the training side.

- :func:`prune_layers` / :class:`CalibrateOptions`: the one layer-by-layer driver (``prune_oneshot`` runs it).
"""

from graphprune.passes.calibrate.batches import check_batches, materialize
from graphprune.passes.calibrate.driver import METHODS, CalibrateOptions, prune_layers

__all__ = ["METHODS", "CalibrateOptions", "check_batches", "materialize", "prune_layers"]
