"""Stage ``fidelity``: how far pruning moved the model from the dense one (not ONNX parity).

Runs after the rewrite (the folded module). The caller's dense model is ``ctx.original`` (kept by
the ``copy`` stage, run in eval mode and never changed); the evaluation batches are the
``calibration-data`` stage's (``ctx.artifacts["calibration"]``: ``--eval`` data, else calibration
batches held back, else the example inputs with a note that this is a weak check). Per output mean /
min cosine, relative L2 and top-1 agreement for logits (:func:`graphprune.runtime.fidelity.measure_fidelity`),
with the per-layer output errors of the ``calibrate`` / ``accuracy-budget`` stage. The
:class:`~graphprune.runtime.fidelity.FidelityReport` is the pass's report and
``ctx.artifacts["fidelity"]``; its ``to_dict()`` is ``report.json``'s top-level ``"fidelity"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from graphprune._module_tensors import eval_mode
from graphprune.passes.base import PassContext, PassResult, register_pass
from graphprune.passes.calibrate.calibrate import layer_errors

if TYPE_CHECKING:  # runtime/ imports onnx on first use; `import graphprune` stays light
    from graphprune.runtime.fidelity import LayerError

__all__ = ["FidelityOptions", "fidelity_stage"]

_WEAK = (
    "fidelity measured on the example inputs only (no evaluation or calibration data): a weak check of a few "
    "samples; give --eval data"
)


@dataclass(frozen=True)
class FidelityOptions:
    """``logits``: output names (``"logits"``, ``"output[0]"``) or indices to score as logits (top-1 agreement);
    outputs named ``*logit*`` always are."""

    logits: tuple[str | int, ...] = ()


@register_pass("fidelity", options=FidelityOptions)
def fidelity_stage(module: nn.Module, options: FidelityOptions, ctx: PassContext) -> PassResult:
    """Measure the pruned model against the caller's dense model on evaluation inputs (fidelity, not parity)."""
    from graphprune.runtime.fidelity import measure_fidelity

    dense = ctx.original if ctx.original is not None else module
    data: Any = ctx.artifacts.get("calibration")
    if data is not None:
        batches, source, notes = list(data.evaluation), data.eval_source, list(data.notes)
    else:
        batches, source, notes = [tuple(ctx.example_inputs)], "example inputs", [_WEAK]
    if ctx.original is None:
        notes.append("no dense reference (the copy stage did not run): the model was compared with itself")
    layers: list[LayerError] = []
    for rec in ctx.report.passes:
        if rec.name in ("calibrate", "accuracy-budget"):
            layers = layer_errors(rec.details)
    with eval_mode(dense):
        fid = measure_fidelity(dense, module, batches, source=source, logits=options.logits, notes=notes, layers=layers)
    ctx.artifacts["fidelity"] = fid
    return PassResult(module, modified=False, report=fid)
