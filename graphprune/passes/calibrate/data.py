"""Stage ``calibration-data``: load and check the calibration and evaluation data before any work.

Runs first in ``compile`` (before the copy). Options: the SOURCES (``--calib`` / ``--eval``: a
``package.module:callable``, a ``.npz`` / ``.safetensors`` file, or, from the API, an iterable of
batches), ``calib_batch``, the method (``--method``; None: SparseGPT with calibration data, else
magnitude) and the budget. Everything is checked against the example inputs here — a source that
does not import or gives nothing, a batch of the wrong arity, dtype or number of dims, non-finite
values, missing or extra arrays (InputError naming batch and input), a method without data or a budget
outside (0, 1) (ConfigError) — and the result is left in ``ctx.artifacts["calibration"]``
(:class:`CompileData`): the calibration batches, the evaluation
batches (given; else every 5th calibration batch held back; else the example inputs, with a note that
this is weak) and the notes for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from graphprune.errors import ConfigError
from graphprune.io.calibration import load_batches, split_sources
from graphprune.passes.base import PassContext, PassResult, register_pass
from graphprune.passes.calibrate.budget import check_budget
from graphprune.passes.calibrate.calibrate import choose_method

__all__ = ["CompileData", "DataOptions", "DataReport", "calibration_data", "prepare_sources"]


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
    with_plan: bool = False,
) -> CompileData:
    """Load and check the data before any work (see the module docstring).

    ``calibration`` / ``evaluation``: a SOURCE string (``package.module:callable``, ``.npz``,
    ``.safetensors``) or an iterable of batches (tuples of positional inputs). Raises InputError for bad
    data, ConfigError for a method without data, a budget outside (0, 1), or a budget with a plan.
    """
    has_cal = calibration is not None
    chosen = "plan" if with_plan else choose_method(method, has_cal)
    bound = None
    if max_drift is not None or min_cosine is not None:
        bound = check_budget(max_drift, min_cosine)
        if with_plan:
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




@dataclass(frozen=True, kw_only=True)
class DataOptions:
    calibration: Any = None
    evaluation: Any = None
    method: str | None = None
    calib_batch: int = 8
    max_drift: float | None = None
    min_cosine: float | None = None
    with_plan: bool = False


@dataclass(frozen=True)
class DataReport:
    method: str
    calibration_batches: int
    evaluation_batches: int
    eval_source: str
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "calibration_batches": self.calibration_batches,
            "evaluation_batches": self.evaluation_batches,
            "eval_source": self.eval_source,
            "notes": list(self.notes),
        }


@register_pass("calibration-data", options=DataOptions)
def calibration_data(module: nn.Module, options: DataOptions, ctx: PassContext) -> PassResult:
    """Load and check calibration / evaluation data against the example inputs before any pruning work."""
    import torch

    calibrated = options.method in ("wanda", "sparsegpt") or (options.method is None and options.calibration is not None)
    if calibrated and isinstance(module, torch.jit.ScriptModule) and not options.with_plan:
        raise ConfigError(
            "calibrated masks (wanda, sparsegpt) hook each layer of a PyTorch module; a TorchScript model's layers "
            "cannot be hooked: use --method magnitude, or give the model as .pt2 or package.module:callable"
        )
    data = prepare_sources(
        ctx.example_inputs,
        calibration=options.calibration,
        evaluation=options.evaluation,
        method=options.method,
        calib_batch=options.calib_batch,
        max_drift=options.max_drift,
        min_cosine=options.min_cosine,
        with_plan=options.with_plan,
    )
    if options.calibration is not None and ctx.config.element_pattern is None:
        data.notes.append("calibration data used for the fidelity figure only: structured patterns choose "
                          "channels / heads by weight scores, not by calibration")
    ctx.artifacts["calibration"] = data
    ctx.report.notes.extend(data.notes)
    report = DataReport(data.method, len(data.calibration), len(data.evaluation), data.eval_source, tuple(data.notes))
    return PassResult(module, modified=False, report=report)
