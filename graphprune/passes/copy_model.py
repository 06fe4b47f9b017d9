"""Stage ``copy``: the one copy of the caller's model that every later stage works on, made ready.

``compile`` never mutates the caller's model: this stage deep-copies it once (in eval mode) and keeps
the caller's object as ``ctx.original``, read later only as the dense reference (fidelity). Every
other stage mutates the copy in place where it must, so a run holds at most one extra copy of the
weights. ``CopyOptions(copy=False)`` hands the model over instead (the CLI, which loaded the model
itself, and the scale benchmark: one model's worth of memory less). Either way the dense outputs on
the evaluation batches are recorded here, before any pruning, as the fidelity stage's reference.

In order, before the copy: the memory the run will need against the memory available, and the room
its outputs need in the output folder (:mod:`graphprune.runtime.resources`: one-line errors before
any work). After it, on the copy (:func:`graphprune.runtime.hf.prepare_model`): the example inputs
are bound to the forward (named or keyword inputs, an adapter for keyword-only forwards,
encoder-decoder ``decoder_input_ids``), KV caches are turned off and the ``dtype`` cast is applied;
each change is a note in the report and ``ctx.example_inputs`` become the positional inputs every
later stage uses. Last, non-finite weights, inputs or outputs (NaN/Inf, or values that overflow in
the forward) fail with WeightError naming the layer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn

from graphprune.errors import InputError
from graphprune.io.checks import check_finite
from graphprune.passes.base import PassContext, PassResult, register_pass
from graphprune.passes.fidelity import record_dense_outputs

__all__ = ["CopyOptions", "CopyReport", "copy_model", "copy_stage"]


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (InputError naming the model when it cannot be copied)."""
    try:
        return copy.deepcopy(model)
    except Exception as e:
        raise InputError(f"cannot copy {type(model).__name__} (graphprune never mutates the caller's model): {e}") from e


@dataclass(frozen=True)
class CopyOptions:
    """``copy``: deep-copy the caller's model (True) or work on it, handed over (False); ``record_dense``:
    record the dense outputs the ``fidelity`` stage compares with (off when no fidelity stage runs)."""

    copy: bool = True
    record_dense: bool = True  # keep the dense outputs on the evaluation batches (the fidelity stage's reference)


@dataclass(frozen=True)
class CopyReport:
    params: int
    copied: bool
    inputs: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "copied": self.copied, "inputs": self.inputs}


@register_pass("copy", mutates=("module", "structure"), options=CopyOptions)
def copy_stage(module: nn.Module, options: CopyOptions, ctx: PassContext) -> PassResult:
    """Check memory and disk room, copy the caller's model once (or take it over), bind inputs, turn caches off, cast."""
    from graphprune.runtime import hf, resources
    from graphprune.runtime.export import ExportOptions

    cfg = ctx.config
    name = ctx.report.model or type(module).__name__
    hf.split_example(ctx.example_inputs)  # one-line InputError for an unusable kind before anything runs
    ctx.report.capture["memory"] = resources.check_memory(
        module, copy=options.copy, validate=cfg.export_onnx and cfg.validate, what=name
    )
    if cfg.export_onnx and ctx.output is not None:
        need = resources.compile_disk_bytes(module)
        resources.check_free_space(ctx.output.path, need, what=f"the outputs of {name} (ONNX weights and pruned.pt2)")
    work = copy_model(module) if options.copy else module
    work.eval()
    prep = hf.prepare_model(work, ctx.example_inputs, ExportOptions.from_config(cfg))
    ctx.example_inputs = prep.args
    data: Any = ctx.artifacts.get("calibration")
    if data is not None:  # calibration / evaluation batches bound and cast like the example inputs
        data.calibration = [hf.bind_batch(b, prep, what=f"calibration batch {i}", dtype=cfg.dtype) for i, b in enumerate(data.calibration)]
        data.evaluation = [hf.bind_batch(b, prep, what=f"evaluation batch {i}", dtype=cfg.dtype) for i, b in enumerate(data.evaluation)]
    ctx.artifacts["input_names"] = prep.tensor_names
    ctx.report.notes.extend(prep.notes)
    ctx.report.capture["inputs"] = prep.record
    check_finite(work, ctx.example_inputs, label=name)  # before any pruning work
    if options.copy:
        ctx.original = module
    if options.record_dense:
        record_dense_outputs(work, ctx)
    return PassResult(work, modified=True, report=CopyReport(sum(p.numel() for p in work.parameters()), options.copy, prep.tensor_names))
