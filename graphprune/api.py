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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import graphprune.passes.all  # noqa: F401  (registers every pass)
from graphprune.config import CompileConfig, as_config
from graphprune.errors import InputError, ValidationError
from graphprune.io.staging import check_output_target, staged_output
from graphprune.passes.base import PassContext, Stage, run_stages, stage
from graphprune.passes.calibrate.stages import calibrate_permutes, data_stage, fidelity_stage, mask_stage
from graphprune.passes.copy_model import CopyOptions, copy_model
from graphprune.passes.cuda_artifact import require_cuda
from graphprune.passes.export_onnx import ONNX_NAME
from graphprune.passes.permute_channels import PermuteChannelsConfig
from graphprune.plan import Plan
from graphprune.report import CompileReport

if TYPE_CHECKING:
    from graphprune.runtime.fidelity import FidelityReport

log = logging.getLogger("graphprune")

REPORT_NAME = "report.json"

__all__ = ["CompileResult", "compile", "compile_stages", "copy_model", "inspect_model", "load", "prepare_output_dir"]


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
    fidelity: FidelityReport | None = None  # pruned vs dense (what pruning cost); report.fidelity is its dict

    @property
    def ok(self) -> bool:
        return all(v.get("ok", True) for v in self.validation.values() if isinstance(v, dict))


def compile_stages(
    config: CompileConfig,
    *,
    scripted: bool = False,
    progress: bool = False,
    calibration: Any = None,
    evaluation: Any = None,
    plan: Plan | None = None,
    copy: bool = True,
) -> list[Stage]:
    """The named stages ``compile`` runs for ``config`` (module docstring).

    ``scripted``: a TorchScript model, which cannot carry mask parametrizations (its masks are folded
    directly). ``calibration`` / ``evaluation``: data sources or batches (the ``calibration-data`` stage
    loads and checks them first); ``plan``: a training-side Plan applied instead of computing masks;
    ``copy``: deep-copy the caller's model (False: it is handed over).
    """
    budget = config.max_drift is not None or config.min_cosine is not None
    has_cal = calibration is not None
    stages: list[Stage] = []
    if has_cal or evaluation is not None or plan is not None or config.method is not None or budget:
        stages.append(
            data_stage(
                calibration, evaluation, method=config.method, calib_batch=config.calib_batch,
                max_drift=config.max_drift, min_cosine=config.min_cosine, plan=plan,
            )
        )
    stages.append(stage("copy", CopyOptions(copy=copy)))
    if config.structured_patterns:
        stages.append(stage("structured"))
    stages += [stage("capture"), stage("find"), stage("decide")]
    permute = PermuteChannelsConfig(time_budget_s=config.permute_budget_s, progress=progress) if config.permute else None
    in_calibrate = plan is None and calibrate_permutes(config, config.method, has_calibration=has_cal, budget=budget)
    if permute is not None and not in_calibrate:
        stages.append(stage("permute-channels", permute, label="permute"))
    stages.append(
        mask_stage(
            config.method, has_calibration=has_cal, plan=plan, max_drift=config.max_drift, min_cosine=config.min_cosine,
            permute=permute if in_calibrate else None,
        )
    )
    if not scripted:
        stages.append(stage("apply-masks", label="rewrite"))
    stages.append(stage("fold-masks", label="rewrite"))
    stages.append(fidelity_stage())
    if config.export_onnx:
        stages += [stage("export"), stage("audit")]
        if config.validate:
            stages.append(stage("parity"))
    stages.append(stage("save"))
    if config.target == "cuda":
        stages.append(stage("cuda-artifact"))
    elif config.form == "masked" and not scripted:
        stages.append(stage("apply-masks", label="masked-form"))
    return stages


def _as_tuple(example_inputs: Any) -> Any:
    """Positional inputs as a tuple; a dict of named inputs or an ``(args, kwargs)`` pair stays as given
    (the ``copy`` stage binds it to the forward, :func:`graphprune.runtime.hf.prepare_inputs`)."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if isinstance(example_inputs, (torch.Tensor, Mapping)):
        return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    raise InputError(
        f"example_inputs must be a tensor, a tuple of positional inputs, a dict of named inputs or (args, kwargs), "
        f"got {type(example_inputs).__name__}"
    )


def _context(model: nn.Module, example_inputs: Any, config: CompileConfig, model_name: str | None, **kw: Any) -> PassContext:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    report = CompileReport(model=model_name or type(model).__name__, config=config.to_dict())
    return PassContext(_as_tuple(example_inputs), config=config, report=report, **kw)


def compile(
    model: nn.Module,
    example_inputs: Any,
    config: CompileConfig | Mapping[str, Any] | None = None,
    *,
    output_dir: str | Path | None = None,
    progress: bool = False,
    dump_dir: str | Path | None = None,
    model_name: str | None = None,
    calibration: Any = None,
    evaluation: Any = None,
    plan: Plan | None = None,
    copy: bool = True,
) -> CompileResult:
    """Prune ``model`` as ``config`` says, export ONNX and prove it.

    ``example_inputs``: a tensor or tuple of positional inputs of realistic shape (they fix the
    shapes used for capture, FLOPs, export and parity). ``output_dir``: where ``model.onnx``,
    ``pruned.pt2`` and ``report.json`` go, as a transaction (:mod:`graphprune.io.staging`: a failed run
    leaves the folder as it was); when None, a temporary folder that lives as long as the returned
    result (removed when the result is garbage-collected, or at once on failure). ``config``: a
    CompileConfig or a dict of its fields (pattern strings such as ``"2:4"`` accepted).
    ``calibration``: data for calibrated masks (``config.method`` wanda / sparsegpt; sparsegpt is the
    default when it is given): an iterable of batches (tuples of positional inputs) or a SOURCE string
    (``package.module:callable``, ``.npz``, ``.safetensors``); ``evaluation``: data for the fidelity
    figure (default: every 5th calibration batch held back, else the example inputs, a weak check the
    report names); ``plan``: a training-side :class:`~graphprune.plan.Plan` applied instead of computing
    masks; ``copy=False``: the model is handed over and mutated (one model's worth of memory less).
    Raises
    ``ValidationError`` when a rewrite or the export does not compute what the pruned model
    computes; the report is still attached to the exception as ``.report``.
    """
    config = as_config(config)
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if config.target == "cuda":
        require_cuda()  # before any work
    scratch = tempfile.TemporaryDirectory(prefix="graphprune-") if output_dir is None else None
    target = Path(output_dir) if output_dir is not None else Path(scratch.name)
    try:
        with staged_output(target) as out:
            ctx = _context(
                model, example_inputs, config, model_name, progress=progress, dump_dir=Path(dump_dir) if dump_dir else None, output=out
            )
            stages = compile_stages(
                config, scripted=isinstance(model, torch.jit.ScriptModule), progress=progress,
                calibration=calibration, evaluation=evaluation, plan=plan, copy=copy,
            )
            try:
                work = run_stages(stages, model, ctx)
            except ValidationError as e:  # the model was pruned but failed a check: its report says where
                e.report = ctx.report  # type: ignore[attr-defined]
                raise
            report = ctx.report
            report.outputs["report"] = str(out.final(REPORT_NAME))
            report.to_json(out.file(REPORT_NAME))
            final_dir = out.target
    except BaseException:
        if scratch is not None:
            scratch.cleanup()
        raise
    result = CompileResult(
        model=work,
        onnx_path=final_dir / ONNX_NAME if "onnx_path" in ctx.artifacts else None,
        report=report,
        validation=_validation(report),
        output_dir=final_dir,
        fidelity=ctx.artifacts.get("fidelity"),
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


def inspect_model(
    model: nn.Module,
    example_inputs: Any,
    config: CompileConfig | Mapping[str, Any] | None = None,
    *,
    model_name: str | None = None,
    calibration: Any = None,
    evaluation: Any = None,
    plan: Plan | None = None,
) -> CompileReport:
    """Decide every site of ``model`` as ``compile`` would, and stop: no masks, no files.

    Runs :func:`compile_stages` up to and including ``decide`` (with structured patterns the copy is
    shrunk first, so ``report.structured`` lists every group, and the element-wise decisions are those
    of the shrunk model). The caller's model is not changed.
    """
    config = as_config(config)
    ctx = _context(model, example_inputs, config, model_name)
    stages = compile_stages(config, scripted=isinstance(model, torch.jit.ScriptModule), calibration=calibration, evaluation=evaluation, plan=plan)
    upto = [s.name for s in stages].index("decide") + 1
    run_stages(stages[:upto], model, ctx)
    return ctx.report


def load(path: str | Path, base: nn.Module | Callable[[], nn.Module], *, device: str | None = None, strict: bool = True) -> nn.Module:
    """Rebuild a model graphprune saved, from its ORIGINAL (dense) constructor ``base`` (a module or a callable).

    - a folder with ``semi_plan.json`` (``compile --target cuda``'s ``cuda/``), or ``device="cuda"``: the 2:4
      CUDA artifact (:func:`graphprune.runtime.semi_cuda.load_semi_structured`), returned as a runner that
      replays one CUDA graph per input shape;
    - a folder with ``delta.json`` (a structured compile, or ``save_pruned``): the shrunk model
      (:func:`graphprune.checkpoint.delta.load`), on the CPU unless ``device`` says otherwise.

    Nothing is unpickled: JSON and safetensors only.
    """
    from graphprune.checkpoint.delta import load as load_delta
    from graphprune.runtime.semi_cuda.artifact import SEMI_PLAN_FILE

    folder = Path(path)
    if device == "cuda" or (folder / SEMI_PLAN_FILE).exists():
        require_cuda()
        from graphprune.runtime.semi_cuda.artifact import load_semi_structured

        return load_semi_structured(folder, base, device=device or "cuda")
    model = load_delta(folder, base, strict=strict)
    return model.to(device) if device is not None else model


def prepare_output_dir(out_dir: Path, *, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse output locations that are unwritable or would overwrite an input (nothing is created)."""
    check_output_target(out_dir, inputs=inputs)
