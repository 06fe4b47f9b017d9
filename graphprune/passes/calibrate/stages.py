"""The stages ``compile`` takes from this package, built from the compile options in one place.

``api.compile_stages`` puts :func:`data_stage` first (before ``copy``: the data are checked before any
work), :func:`mask_stage` where ``compute-masks`` was (label ``masks``), and :func:`fidelity_stage` after
the rewrite (``fold-masks``). With ``--permute`` and a calibrated method (:func:`calibrate_permutes`) the
``calibrate`` stage permutes on its own scores and the separate ``permute-channels`` stage is left out.
"""

from __future__ import annotations

from typing import Any, Literal

from graphprune.config import CompileConfig, SemiStructured
from graphprune.passes.base import Stage, stage
from graphprune.passes.calibrate.apply_plan import PlanOptions
from graphprune.passes.calibrate.budget import BudgetOptions
from graphprune.passes.calibrate.calibrate import CalibrateStage, choose_method
from graphprune.passes.calibrate.data import DataOptions
from graphprune.passes.calibrate.driver import CalibrateOptions
from graphprune.plan import Plan

__all__ = ["calibrate_permutes", "data_stage", "fidelity_stage", "mask_stage"]


def data_stage(
    calibration: Any = None,
    evaluation: Any = None,
    *,
    method: str | None = None,
    calib_batch: int = 8,
    max_drift: float | None = None,
    min_cosine: float | None = None,
    plan: Plan | None = None,
) -> Stage:
    """The ``calibration-data`` stage (first in the list)."""
    return stage(
        "calibration-data",
        DataOptions(
            calibration=calibration,
            evaluation=evaluation,
            method=method,
            calib_batch=calib_batch,
            max_drift=max_drift,
            min_cosine=min_cosine,
            with_plan=plan is not None,
        ),
    )


def mask_stage(
    method: str | None,
    *,
    has_calibration: bool,
    plan: Plan | None = None,
    max_drift: float | None = None,
    min_cosine: float | None = None,
    options: CalibrateOptions | None = None,
    permute: Any = None,
    ranking: Literal["error", "single"] = "error",
) -> Stage:
    """The stage that computes the masks (label ``masks``): ``apply-plan`` (a saved plan),
    ``accuracy-budget`` (a budget), ``calibrate`` (Wanda / SparseGPT) or ``compute-masks`` (magnitude).

    ``method``: ``--method`` (None: SparseGPT with calibration data, else magnitude; ConfigError for a
    calibrated method without data). ``permute``: the ``PermuteChannelsConfig`` of ``--permute``, handed to
    ``calibrate`` (see :func:`calibrate_permutes`).
    """
    if plan is not None:
        return stage("apply-plan", PlanOptions(plan), label="masks")
    chosen = choose_method(method, has_calibration)
    base = options or CalibrateOptions()
    opts = CalibrateOptions(**{**base.to_dict(), "method": chosen})
    if max_drift is not None or min_cosine is not None:
        return stage(
            "accuracy-budget",
            BudgetOptions(max_drift=max_drift, min_cosine=min_cosine, options=opts, ranking=ranking),
            label="masks",
        )
    if chosen == "magnitude":
        return stage("compute-masks", label="masks")
    return stage("calibrate", CalibrateStage(options=opts, permute=permute), label="masks")


def calibrate_permutes(config: CompileConfig, method: str | None, *, has_calibration: bool, budget: bool) -> bool:
    """True when ``--permute`` is handed to the ``calibrate`` stage (searched on the method's own scores),
    so ``compile_stages`` must leave out its own ``permute-channels`` stage."""
    return bool(
        config.permute
        and not budget
        and choose_method(method, has_calibration) != "magnitude"
        and isinstance(config.element_pattern, SemiStructured)
    )


def fidelity_stage(logits: tuple[str | int, ...] = ()) -> Stage:
    """The ``fidelity`` stage (after ``fold-masks``)."""
    from graphprune.passes.fidelity import FidelityOptions

    return stage("fidelity", FidelityOptions(logits=tuple(logits)))
