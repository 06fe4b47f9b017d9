"""The public entry point: ``compile(model, example_inputs, config) -> CompileResult``.

Pipeline (each stage timed into ``report.timings``)::

    copy ─▶ [structured: shrink] ─▶ capture ─▶ find sites ─▶ decide ─▶ compute_masks ─▶ apply_masks
         ─▶ [fold_masks] ─▶ check masked == folded ─▶ export ONNX ─▶ audit ─▶ onnxruntime parity ─▶ save

The caller's model is never mutated: it is deep-copied once at entry and the passes work on the
copy. The ONNX file always carries the folded form (zeros in initializers, where TensorRT looks for
2:4); ``CompileResult.model`` is in ``config.form``.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphprune._modules import get_param
from graphprune.analysis.decide import decide, unsupported_decision
from graphprune.analysis.find_sites import find_sites
from graphprune.capture import capture
from graphprune.config import CompileConfig, SemiStructured, as_config
from graphprune.errors import InputError, UnsupportedModelError, ValidationError
from graphprune.io.checks import check_finite
from graphprune.io.pt2 import write_pt2
from graphprune.io.staging import StagedOutput, check_output_target, staged_output
from graphprune.passes.base import PassContext, run_pass
from graphprune.passes.fx.apply_masks import apply_masks
from graphprune.passes.fx.compute_masks import compute_masks
from graphprune.passes.fx.fold_masks import fold_masks
from graphprune.report import CompileReport

log = logging.getLogger("graphprune")


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


@contextmanager
def _stage(report: CompileReport, name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    log.info("%s ...", name)
    try:
        yield
    finally:
        report.timings[name] = report.timings.get(name, 0.0) + time.perf_counter() - t0


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    raise InputError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def _run(model: nn.Module, inputs: tuple[Any, ...]) -> Any:
    with torch.no_grad():
        return model(*inputs)


def copy_model(model: nn.Module) -> nn.Module:
    """The one copy the pipeline makes of the caller's model."""
    try:
        return copy.deepcopy(model)
    except Exception as e:
        raise InputError(f"cannot copy {type(model).__name__} (graphprune never mutates the caller's model): {e}") from e


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
    ``pruned.pt2`` and ``report.json`` go (a fresh temporary folder when None). Raises
    ``ValidationError`` when a rewrite or the export does not compute what the pruned model
    computes; the report is still attached to the exception as ``.report``.
    """
    out_dir = Path(output_dir) if output_dir is not None else Path(tempfile.gettempdir()) / f"graphprune-{uuid.uuid4().hex[:12]}"
    with staged_output(out_dir) as stage:
        return _compile(model, example_inputs, as_config(config), stage, progress=progress, dump_dir=dump_dir, model_name=model_name)


def _compile(
    model: nn.Module, example_inputs: Any, config: CompileConfig, stage: StagedOutput, *,
    progress: bool, dump_dir: str | Path | None, model_name: str | None,
) -> CompileResult:
    from graphprune.runtime import compare

    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = _as_tuple(example_inputs)
    report = CompileReport(model=model_name or type(model).__name__, config=config.to_dict())
    ctx = PassContext(inputs, report=report, progress=progress, dump_dir=Path(dump_dir) if dump_dir else None)
    validation: dict[str, Any] = {}

    with _stage(report, "copy"):
        work = copy_model(model)
        work.eval()
        check_finite(work, inputs, label=report.model)  # NaN/Inf weights or overflow: before any pruning work

    if config.structured_patterns:
        with _stage(report, "structured"):
            work = _structured(work, inputs, config, ctx)

    with _stage(report, "capture"):
        try:
            _run(work, inputs)
        except Exception as e:
            raise UnsupportedModelError(
                f"{report.model} fails on the given example inputs ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "pass inputs of the shapes and dtypes its forward expects (CLI: --input-shape)"
            ) from e
        cap = capture(work, inputs)
        ctx.capture = cap
        report.capture = cap.record()
        if cap.method == "walk" and config.structured_patterns:
            report.notes.append("structured pruning needs a graph; the module walk found none")

    with _stage(report, "find_sites"):
        scan = find_sites(cap)
        for site in scan.sites:
            site.extra.setdefault("not_floating", not get_param(work, site.param).is_floating_point())
            ctx.sites[site.param] = site
            decision, pattern = decide(site, config)
            ctx.decisions[site.param] = decision
            if pattern is not None:
                ctx.patterns[site.param] = pattern
        if not scan.sites and cap.method == "walk":
            tried = "; ".join(f"{t['method']}: {t['error']}" for t in cap.tried if not t["ok"])
            raise UnsupportedModelError(
                f"no capture method could find prunable layers in {report.model}: {tried}; "
                "the module walk knows only torch.nn Linear/Conv/MultiheadAttention and transformers Conv1D"
            )
        report.decisions += list(ctx.decisions.values()) + [
            unsupported_decision(name, tuple(get_param(work, name).shape), why) for name, why in scan.unsupported
        ]

    if config.permute:
        with _stage(report, "permute"):
            from graphprune.passes.fx.permute_channels import PermuteChannelsConfig, permute_channels

            opts = PermuteChannelsConfig(time_budget_s=config.permute_budget_s, progress=progress)
            work = run_pass("permute-channels", lambda m, c, x: permute_channels(m, c, x, options=opts), work, config, ctx)

    reference = None
    with _stage(report, "masks"):
        work = run_pass("compute-masks", compute_masks, work, config, ctx)
    with _stage(report, "rewrite"):
        scripted = isinstance(work, torch.jit.ScriptModule)
        # the masked form keeps its own copy; the folded one is made from the dense weights (a
        # parametrized module must not be deep-copied: the copies would share its generated class)
        folded = work if (config.form == "folded" or scripted) else copy.deepcopy(work)
        if not scripted:
            work = run_pass("apply-masks", apply_masks, work, config, ctx)
            reference = _run(work, inputs)  # the masked form: the numbers every later form must match
        folded = run_pass("fold-masks", fold_masks, folded, config, ctx)
        folded_out = _run(folded, inputs)
        if reference is not None:
            stats = compare.compare_outputs(reference, folded_out, name="masked vs folded")
            validation["masked_vs_folded"] = stats.to_dict()
            if not stats.ok:
                raise _attach(ValidationError(f"folded model differs from the masked model: {stats.summary()}"), report)
        reference = folded_out
        if config.form == "folded" or scripted:
            work = folded

    onnx_path: Path | None = None
    if config.export_onnx:
        from graphprune.runtime import audit as audit_mod
        from graphprune.runtime import export as export_mod
        from graphprune.runtime import ort

        onnx_path = stage.file("model.onnx")
        with _stage(report, "export"):
            rec = export_mod.export_onnx(folded, inputs, onnx_path, opset=config.opset)
            report.outputs["onnx"] = str(stage.final("model.onnx"))
            report.capture["onnx_exporter"] = rec.exporter
        with _stage(report, "audit"):
            aud = _audit(audit_mod, onnx_path, ctx, rec.initializer_sources)
            report.audit = aud
            validation["audit"] = {"ok": aud["ok"], "summary": aud["summary"]}
        if config.validate:
            with _stage(report, "parity"):
                pstats = ort.check_parity(folded, inputs, onnx_path)
                report.parity = pstats.to_dict()
                validation["onnx_parity"] = pstats.to_dict()
        if not aud["ok"]:
            raise _attach(ValidationError(f"ONNX audit failed for {onnx_path}: {aud['summary']}"), report)
        if config.validate and not validation["onnx_parity"]["ok"]:
            raise _attach(
                ValidationError(f"ONNX {onnx_path} does not compute what the pruned model computes: {pstats.summary()}"),
                report,
            )

    with _stage(report, "save"):
        saved = _save_pt2(folded if config.form == "folded" else work, inputs, stage.file("pruned.pt2"))
        if saved:
            report.outputs["pt2"] = str(stage.final("pruned.pt2"))
        else:
            report.notes.append("pruned.pt2 not written: the pruned model could not be re-exported with torch.export")
    report.outputs["report"] = str(stage.final("report.json"))
    report.to_json(stage.file("report.json"))
    del reference
    final_onnx = stage.final("model.onnx") if onnx_path is not None else None
    return CompileResult(model=work, onnx_path=final_onnx, report=report, validation=validation, output_dir=stage.target)


def _attach(err: ValidationError, report: CompileReport) -> ValidationError:
    err.report = report  # type: ignore[attr-defined]
    return err


def prepare_output_dir(out_dir: Path, *, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse output locations that are unwritable or would overwrite an input (nothing is created)."""
    check_output_target(out_dir, inputs=inputs)


def _audit(audit_mod: Any, onnx_path: Path, ctx: PassContext, sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Audit the exported ONNX: every pruned site must be found there with its own pattern intact.

    Initializers are mapped back to parameters through the exporter's value comparison
    (``sources``: the exporter renames transposed weights, e.g. ``val_9``). Each distinct N:M
    pattern is audited on its own initializers; unstructured sites must carry at least their zeros.
    """
    param_to_init: dict[str, str] = {}
    for init, info in sources.items():
        if info.get("param"):
            param_to_init.setdefault(info["param"], init)
    for name in ctx.patterns:
        param_to_init.setdefault(name, name)  # initializers that keep the parameter's name
    by_pattern: dict[tuple[int, int] | None, list[str]] = {}
    for name, pat in ctx.patterns.items():
        key = (pat.n, pat.m) if isinstance(pat, SemiStructured) else None
        by_pattern.setdefault(key, []).append(name)
    base = audit_mod.audit_onnx(onnx_path)
    layers = {layer.initializer: layer for layer in base.layers}
    not_found = sorted(n for n in ctx.patterns if param_to_init[n] not in layers)
    violations: list[str] = []
    checked = 0
    for key, names in by_pattern.items():
        present = [n for n in names if param_to_init[n] in layers]
        if key is None:
            for n in present:
                checked += 1
                if layers[param_to_init[n]].zeros < ctx.decisions[n].zeros:
                    violations.append(n)
            continue
        rep = audit_mod.audit_onnx(onnx_path, n=key[0], m=key[1], expect=[param_to_init[n] for n in present])
        nm_ok = {layer.initializer: layer.nm_ok for layer in rep.layers}
        for n in present:
            checked += 1
            if not nm_ok.get(param_to_init[n], False):
                violations.append(n)
    ok = not violations and not not_found
    pats = ", ".join(sorted({str(p) for p in ctx.patterns.values()})) or "none"
    summary = (
        f"{len(layers)} weights in the ONNX; {checked}/{len(ctx.patterns)} pruned layers found; "
        f"pattern ({pats}) holds on the TensorRT axis for {checked - len(violations)}/{checked}"
        + (f"; violations in {violations[:5]}" if violations else "")
        + (f"; not found: {not_found[:5]}" if not_found else "")
    )
    return {
        "ok": ok,
        "summary": summary,
        "matched": checked,
        "violations": violations,
        "not_found": not_found,
        "initializer_of": param_to_init,
        "layers": [layer.to_dict() for layer in base.layers],
    }


def _structured(work: nn.Module, inputs: tuple[Any, ...], config: CompileConfig, ctx: PassContext) -> nn.Module:
    from graphprune.structured import prune_into_report

    res = prune_into_report(work, inputs, config, ctx.report)
    ctx.report.decisions.extend(res.decisions)
    return res.model


def _save_pt2(model: nn.Module, inputs: tuple[Any, ...], path: Path) -> bool:
    if isinstance(model, torch.jit.ScriptModule):
        return False
    try:
        ep = torch.export.export(model, inputs, strict=False)
    except Exception as e:
        log.warning("pruned model could not be re-exported for pruned.pt2: %s", e)
        return False
    write_pt2(path, ep)  # a full disk is an OutputError, not a C++ abort
    return True
