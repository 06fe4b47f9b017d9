"""How ``compile`` uses this package: which pass computes the masks, and the fidelity measurement.

``api.py`` needs three calls (see each docstring):

1. :func:`prepare_sources` — right after the example inputs are known, before capture or any pruning:
   loads and checks ``--calib`` / ``--eval`` (InputError naming batch and input), picks the method
   (:func:`~graphprune.passes.calibrate.calibrate.choose_method`), validates the budget, and splits off
   evaluation batches when none are given;
2. :func:`mask_pass` — the ``(name, pass)`` that replaces ``compute-masks``: ``apply-plan`` (a saved
   plan), ``accuracy-budget`` (``max_drift`` / ``min_cosine``), ``calibrate`` (Wanda / SparseGPT) or
   ``compute-masks`` (magnitude, unchanged);
3. :func:`measure` — after the rewrite: fidelity of the pruned module to the caller's dense model on
   the evaluation batches, with the per-layer errors of the calibrate / budget pass; its ``to_dict()``
   is ``report.json``'s top-level ``"fidelity"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from graphprune._modules import eval_mode
from graphprune.calibration_sources import load_batches, split_sources
from graphprune.config import CompileConfig, SemiStructured
from graphprune.errors import ConfigError
from graphprune.passes.base import PassContext, PassResult
from graphprune.passes.calibrate.apply_plan import apply_plan
from graphprune.passes.calibrate.budget import accuracy_budget, check_budget
from graphprune.passes.calibrate.calibrate import calibrate, choose_method, layer_errors
from graphprune.passes.calibrate.driver import CalibrateOptions
from graphprune.plan import Plan
from graphprune.runtime.fidelity import FidelityReport, LayerError, measure_fidelity

__all__ = ["CompileData", "mask_pass", "measure", "prepare_sources", "runs_permute"]

Pass = Callable[[nn.Module, CompileConfig, PassContext], PassResult]


@dataclass
class CompileData:
    """What :func:`prepare_sources` resolved: the method, the batches and the notes for the report."""

    method: str
    calibration: list[tuple[Any, ...]]
    evaluation: list[tuple[Any, ...]]
    eval_source: str  # "eval" | "calibration holdout" | "example inputs"
    max_drift: float | None = None
    notes: list[str] = field(default_factory=list)


def prepare_sources(
    example_inputs: tuple[Any, ...],
    *,
    calibration: Any = None,
    evaluation: Any = None,
    method: str | None = None,
    calib_batch: int = 8,
    max_drift: float | None = None,
    min_cosine: float | None = None,
    plan: Plan | None = None,
) -> CompileData:
    """Load and check the data before any work (module docstring, step 1).

    ``calibration`` / ``evaluation``: a SOURCE string (``package.module:callable``, ``.npz``,
    ``.safetensors``) or an iterable of batches (tuples of positional inputs). Raises InputError for bad
    data, ConfigError for a method without data, a budget outside (0, 1), or a budget with a plan.
    """
    has_cal = calibration is not None
    chosen = "plan" if plan is not None else choose_method(method, has_cal)
    bound = None
    if max_drift is not None or min_cosine is not None:
        bound = check_budget(max_drift, min_cosine)
        if plan is not None:
            raise ConfigError("an accuracy budget chooses the masks; it cannot be combined with a saved plan (--plan)")
    cal = load_batches(calibration, batch_size=calib_batch, reference=example_inputs) if has_cal else None
    ev = (
        load_batches(evaluation, batch_size=calib_batch, reference=example_inputs, what="evaluation")
        if evaluation is not None
        else None
    )
    same = isinstance(calibration, str) and calibration == evaluation
    src = split_sources(cal, ev, example_inputs, same_source=same or (has_cal and calibration is evaluation))
    if chosen in ("wanda", "sparsegpt") and src.eval_source == "calibration holdout" and not src.calibration:
        raise ConfigError("no calibration batch is left after holding some back for evaluation; give --eval data")
    return CompileData(chosen, src.calibration, src.evaluation, src.eval_source, bound, src.notes)


def mask_pass(
    data: CompileData,
    *,
    plan: Plan | None = None,
    options: CalibrateOptions | None = None,
    permute: Any = None,
) -> tuple[str, Pass]:
    """The pass that computes the masks (module docstring, step 2) and its name.

    ``options``: calibration options (``method`` is taken from ``data``); ``permute``: a
    ``PermuteChannelsConfig`` when ``--permute`` is on — the calibrate pass then permutes itself, on the
    method's scores, and compile must skip its own ``permute-channels`` stage (:func:`runs_permute`).
    """
    if data.method == "plan":
        if plan is None:
            raise ConfigError("method 'plan' needs the plan")
        return "apply-plan", lambda m, c, x: apply_plan(m, c, x, plan=plan)
    base = options or CalibrateOptions()
    opts = CalibrateOptions(**{**base.to_dict(), "method": data.method})
    if data.max_drift is not None:
        return "accuracy-budget", lambda m, c, x: accuracy_budget(
            m, c, x, calibration=data.calibration, evaluation=data.evaluation, options=opts, max_drift=data.max_drift
        )
    if data.method == "magnitude":
        from graphprune.passes.fx.compute_masks import compute_masks

        return "compute-masks", compute_masks
    return "calibrate", lambda m, c, x: calibrate(m, c, x, calibration=data.calibration, options=opts, permute=permute)


def runs_permute(data: CompileData, config: CompileConfig) -> bool:
    """True when the mask pass permutes channels itself (so compile's own permute stage must not run)."""
    return (
        config.permute
        and data.method in ("wanda", "sparsegpt")
        and data.max_drift is None
        and isinstance(config.element_pattern, SemiStructured)
    )


def measure(
    dense: nn.Module,
    pruned: Callable[..., Any],
    data: CompileData,
    ctx: PassContext,
    *,
    logits: Iterable[str | int] = (),
) -> FidelityReport:
    """Fidelity of ``pruned`` to the caller's ``dense`` model on ``data.evaluation`` (module docstring, step 3).

    ``dense`` runs in eval mode (its modes are restored; no weight changes). The per-layer errors come
    from the ``calibrate`` / ``accuracy-budget`` pass record in ``ctx.report.passes``.
    """
    layers: list[LayerError] = []
    for rec in ctx.report.passes:
        if rec.name in ("calibrate", "accuracy-budget"):
            layers = layer_errors(rec.details)
    with eval_mode(dense):
        fid = measure_fidelity(dense, pruned, data.evaluation, source=data.eval_source, logits=logits, layers=layers)
    return fid.with_notes(*data.notes)
