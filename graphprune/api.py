"""The public entry points: ``compile(model, example_inputs, config) -> CompileResult`` and ``inspect_model``.

``compile`` is an explicit list of named stages (:func:`compile_stages`), each a registered pass run by
the pass runner (:func:`graphprune.passes.base.run_stages`), so every stage is timed, recorded in the
report, checked against what it declares it changes, and dumped with ``dump_dir``::

    stage:  copy ─▶ [structured] ─▶ capture ─▶ find ─▶ decide ─▶ [permute] ─▶ masks ─▶ rewrite
            ─▶ export ─▶ audit ─▶ [parity] ─▶ save ─▶ [masked-form]
    passes: copy, structured, capture, find, decide, permute-channels, compute-masks,
            apply-masks + fold-masks (checks masked == folded), export, audit, parity, save,
            apply-masks again (form="masked")

``inspect_model`` runs the same list stopped after ``decide``, so both make the same decisions.

The caller's model is never mutated: the ``copy`` stage deep-copies it once and every later stage
works on that copy in place (one extra copy of the weights for the whole run). The ONNX always
carries the folded form (zeros in initializers, where TensorRT looks for 2:4);
``CompileResult.model`` is in ``config.form``.
"""

from __future__ import annotations

import logging
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import graphprune.passes.all  # noqa: F401  (registers every pass)
from graphprune.config import CompileConfig
from graphprune.errors import GraphPruneError, InputError, OutputError
from graphprune.passes.base import PassContext, Stage, run_stages, stage
from graphprune.passes.copy_model import copy_model
from graphprune.passes.permute_channels import PermuteChannelsConfig
from graphprune.report import CompileReport

log = logging.getLogger("graphprune")

__all__ = ["CompileResult", "compile", "compile_stages", "copy_model", "inspect_model", "prepare_output_dir"]


@dataclass
class CompileResult:
    """What ``compile`` returns.

    ``model``: the pruned module (folded or masked, per config); ``onnx_path``: the exported ONNX
    (None when export is off); ``report``: every decision and measurement; ``validation``: the
    numeric checks (masked vs folded in torch, ONNX audit, onnxruntime parity), each with ``ok``.
    """

    model: nn.Module
    onnx_path: Path | None
    report: CompileReport
    validation: dict[str, Any] = field(default_factory=dict)
    output_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return all(v.get("ok", True) for v in self.validation.values() if isinstance(v, dict))


def compile_stages(config: CompileConfig, *, scripted: bool = False, progress: bool = False) -> list[Stage]:
    """The named stages ``compile`` runs for ``config`` (``scripted``: a TorchScript model, which
    cannot carry mask parametrizations: its masks are folded directly)."""
    stages = [stage("copy")]
    if config.structured_patterns:
        stages.append(stage("structured"))
    stages += [stage("capture"), stage("find"), stage("decide")]
    if config.permute:
        opts = PermuteChannelsConfig(time_budget_s=config.permute_budget_s, progress=progress)
        stages.append(stage("permute-channels", opts, label="permute"))
    stages.append(stage("compute-masks", label="masks"))
    if not scripted:
        stages.append(stage("apply-masks", label="rewrite"))
    stages.append(stage("fold-masks", label="rewrite"))
    if config.export_onnx:
        stages += [stage("export"), stage("audit")]
        if config.validate:
            stages.append(stage("parity"))
    stages.append(stage("save"))
    if config.form == "masked" and not scripted:
        stages.append(stage("apply-masks", label="masked-form"))
    return stages


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    raise InputError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def _context(model: nn.Module, example_inputs: Any, config: CompileConfig, model_name: str | None, **kw: Any) -> PassContext:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    report = CompileReport(model=model_name or type(model).__name__, config=config.to_dict())
    return PassContext(_as_tuple(example_inputs), config=config, report=report, **kw)


def compile(
    model: nn.Module,
    example_inputs: Any,
    config: CompileConfig | None = None,
    *,
    output_dir: str | Path | None = None,
    progress: bool = False,
    dump_dir: str | Path | None = None,
    model_name: str | None = None,
) -> CompileResult:
    """Prune ``model`` as ``config`` says, export ONNX and prove it.

    ``example_inputs``: a tensor or tuple of positional inputs of realistic shape (they fix the
    shapes used for capture, FLOPs, export and parity). ``output_dir``: where ``model.onnx``,
    ``pruned.pt2`` and ``report.json`` go; when None, a temporary folder that lives as long as the
    returned result (removed when the result is garbage-collected, or at once on failure). Raises
    ``ValidationError`` when a rewrite or the export does not compute what the pruned model
    computes; the report is still attached to the exception as ``.report``.
    """
    config = config or CompileConfig()
    scratch = tempfile.TemporaryDirectory(prefix="graphprune-") if output_dir is None else None
    out_dir = Path(output_dir) if output_dir is not None else Path(scratch.name)  # type: ignore[union-attr]
    try:
        ctx = _context(
            model, example_inputs, config, model_name, progress=progress, dump_dir=Path(dump_dir) if dump_dir else None, output_dir=out_dir
        )
        prepare_output_dir(out_dir)
        stages = compile_stages(config, scripted=isinstance(model, torch.jit.ScriptModule), progress=progress)
        try:
            work = run_stages(stages, model, ctx)
        except GraphPruneError as e:
            e.report = ctx.report  # type: ignore[attr-defined]
            raise
        report = ctx.report
        report.outputs["report"] = str(out_dir / "report.json")
        report.to_json(out_dir / "report.json")
    except BaseException:
        if scratch is not None:
            scratch.cleanup()
        raise
    result = CompileResult(
        model=work,
        onnx_path=ctx.artifacts.get("onnx_path"),
        report=report,
        validation=_validation(report),
        output_dir=out_dir,
    )
    if scratch is not None:  # the files live as long as the result that names them
        weakref.finalize(result, scratch.cleanup)
    return result


def _validation(report: CompileReport) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fold = next((p for p in report.passes if p.name == "fold-masks"), None)
    if fold is not None and fold.details.get("masked_vs_folded"):
        out["masked_vs_folded"] = fold.details["masked_vs_folded"]
    if report.audit:
        out["audit"] = {"ok": report.audit["ok"], "summary": report.audit["summary"]}
    if report.parity:
        out["onnx_parity"] = report.parity
    return out


def inspect_model(model: nn.Module, example_inputs: Any, config: CompileConfig | None = None, *, model_name: str | None = None) -> CompileReport:
    """Decide every site of ``model`` as ``compile`` would, and stop: no masks, no files.

    Runs :func:`compile_stages` up to and including ``decide`` (with structured patterns the copy is
    shrunk first, so ``report.structured`` lists every group, and the element-wise decisions are those
    of the shrunk model). The caller's model is not changed.
    """
    config = config or CompileConfig()
    ctx = _context(model, example_inputs, config, model_name)
    stages = compile_stages(config, scripted=isinstance(model, torch.jit.ScriptModule))
    upto = [s.name for s in stages].index("decide") + 1
    run_stages(stages[:upto], model, ctx)
    return ctx.report


def prepare_output_dir(out_dir: Path, *, inputs: tuple[Path, ...] = ()) -> None:
    """Create ``out_dir`` and refuse locations that are unwritable or would overwrite an input."""
    outputs = [out_dir / n for n in ("model.onnx", "pruned.pt2", "report.json")]
    for src in inputs:
        src_r = src.resolve()
        if src_r == out_dir.resolve() or any(o.resolve() == src_r for o in outputs):
            raise OutputError(f"output {out_dir} would overwrite the input {src}; choose another -o directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output path {out_dir} exists and is not a directory; give a directory with -o")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out_dir, prefix=".graphprune-probe-", delete=True)
        probe.close()
    except OSError as e:
        raise OutputError(f"output directory {out_dir} is not writable: {e.strerror or e}") from e
