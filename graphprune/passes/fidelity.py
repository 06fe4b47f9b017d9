"""Stage ``fidelity``: how far pruning moved the model from the dense one (not ONNX parity).

Runs after the rewrite (the folded module). The dense reference is the outputs the ``copy`` stage
recorded on the evaluation batches from graphprune's prepared copy before anything was pruned
(:func:`record_dense_outputs`: same inputs, cache setting and dtype as the pruned model); the evaluation batches are the
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


def evaluation_batches(ctx: PassContext) -> tuple[list[tuple[Any, ...]], str, list[str]]:
    """The evaluation batches, where they came from, and the notes (see the module docstring)."""
    data: Any = ctx.artifacts.get("calibration")
    if data is not None and data.eval_source != "example inputs":
        return list(data.evaluation), data.eval_source, list(data.notes)
    # the example inputs as the copy stage bound them (a dict of named inputs becomes positional there)
    return [tuple(ctx.example_inputs)], "example inputs", list(data.notes) if data is not None else [_WEAK]


def record_dense_outputs(module: nn.Module, ctx: PassContext) -> None:
    """Run the dense, prepared copy on the evaluation batches before anything is pruned and keep its
    outputs (``ctx.artifacts["dense_outputs"]``): the reference ``fidelity`` compares with, valid whether
    the caller's model was copied or handed over, and computed with the same inputs, cache setting and
    dtype as the pruned model."""
    import torch

    batches, source, _ = evaluation_batches(ctx)
    outs = []
    with eval_mode(module), torch.no_grad():
        if source == "example inputs":
            try:
                outs.append(_detach(module(*batches[0])))
            except Exception:  # the model does not run on its own example inputs: capture will say why
                return
        else:
            for i, b in enumerate(batches):
                outs.append(_detach(_forward(module, b, f"{source} batch {i}")))
        data: Any = ctx.artifacts.get("calibration")
        if data is not None and data.calibration:  # one calibration batch too, before hours of calibration
            _forward(module, data.calibration[0], "calibration batch 0")
    ctx.artifacts["dense_outputs"] = outs


def _forward(module: nn.Module, batch: tuple[Any, ...], what: str) -> Any:
    """``module(*batch)``; a batch the dense model cannot run is bad input (exit 3), named."""
    from graphprune.errors import GraphPruneError, InputError, is_out_of_memory

    try:
        return module(*batch)
    except GraphPruneError:
        raise
    except Exception as e:
        if is_out_of_memory(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(
            f"{what} fails in the dense model's forward ({type(e).__name__}: {first[:200]}): check that the data "
            "matches the model (token ids below the vocabulary size, shapes, dtypes)"
        ) from e


def _detach(tree: Any) -> Any:
    import torch.utils._pytree as pytree

    return pytree.tree_map(lambda x: x.detach().clone() if hasattr(x, "detach") else x, tree)


class _Replay:
    """The dense model's recorded outputs, returned batch after batch in order."""

    def __init__(self, outputs: list[Any]) -> None:
        self._outputs = iter(outputs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return next(self._outputs)


@register_pass("fidelity", options=FidelityOptions)
def fidelity_stage(module: nn.Module, options: FidelityOptions, ctx: PassContext) -> PassResult:
    """Measure the pruned model against the dense model on evaluation inputs (fidelity, not parity)."""
    from graphprune.runtime.fidelity import measure_fidelity

    batches, source, notes = evaluation_batches(ctx)
    recorded = ctx.artifacts.get("dense_outputs")
    if recorded is not None and len(recorded) == len(batches):
        dense: Any = _Replay(recorded)
    else:
        dense = ctx.original if ctx.original is not None else module
        if ctx.original is None:
            notes.append("no dense reference (the copy stage did not run): the model was compared with itself")
    layers: list[LayerError] = []
    for rec in ctx.report.passes:
        if rec.name in ("calibrate", "accuracy-budget"):
            layers = layer_errors(rec.details)
    with eval_mode(module):
        fid = measure_fidelity(dense, module, batches, source=source, logits=options.logits, notes=notes, layers=layers)
    ctx.artifacts["fidelity"] = fid
    ctx.report.fidelity = fid.to_dict()
    return PassResult(module, modified=False, report=fid)
