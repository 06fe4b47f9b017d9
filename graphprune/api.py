"""The public entry point: ``compile(model, example_inputs, config) -> CompileResult``.

Pipeline (each stage timed into ``report.timings``)::

    copy ─▶ [structured: shrink] ─▶ capture ─▶ find sites ─▶ decide ─▶ compute_masks ─▶ apply_masks
         ─▶ [fold_masks] ─▶ check masked == folded ─▶ export ONNX ─▶ audit ─▶ onnxruntime parity ─▶ save

The caller's model is never mutated: it is deep-copied once at entry and the passes work on the
copy (``copy=False``: the caller hands the model over and the passes work on it, which saves one
model's worth of memory on large models). The ONNX file always carries the folded form (zeros in initializers, where TensorRT looks for
2:4); ``CompileResult.model`` is in ``config.form``.
"""

from __future__ import annotations

import copy as _copy
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphprune._io import atomic_write
from graphprune._modules import get_param
from graphprune.analysis.decide import decide, unsupported_decision
from graphprune.analysis.find_sites import find_sites
from graphprune.capture import capture
from graphprune.config import CompileConfig
from graphprune.errors import InputError, OutputError, UnsupportedModelError, ValidationError
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


def _run(model: nn.Module, inputs: tuple[Any, ...]) -> Any:
    with torch.no_grad():
        return model(*inputs)


def copy_model(model: nn.Module) -> nn.Module:
    """The one copy the pipeline makes of the caller's model."""
    try:
        return _copy.deepcopy(model)
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
    copy: bool = True,
    export_options: Any = None,
) -> CompileResult:
    """Prune ``model`` as ``config`` says, export ONNX and prove it.

    ``example_inputs``: a tensor or tuple of positional inputs of realistic shape (they fix the
    shapes used for capture, FLOPs, export and parity). ``output_dir``: where ``model.onnx``,
    ``pruned.pt2`` and ``report.json`` go (a fresh temporary folder when None). Raises
    ``ValidationError`` when a rewrite or the export does not compute what the pruned model
    computes; the report is still attached to the exception as ``.report``.

    ``example_inputs`` may also be a dict of named inputs or an ``(args, kwargs)`` pair
    (:func:`graphprune.runtime.hf.prepare_inputs`). ``copy=False``: work on ``model`` itself
    (mutated; no defensive deep copy). ``export_options``: a
    :class:`graphprune.runtime.export.ExportOptions` (dtype, dynamic batch/axes, input names).
    """
    from graphprune.runtime import compare, hf, resources
    from graphprune.runtime.export import ExportOptions

    config = config or CompileConfig()
    export_opts = export_options if export_options is not None else ExportOptions()
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    hf.split_example(example_inputs)  # one-line InputError for an unusable kind before anything runs
    out_dir = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="graphprune-"))
    prepare_output_dir(out_dir)
    report = CompileReport(model=model_name or type(model).__name__, config=config.to_dict())
    validation: dict[str, Any] = {}
    report.capture["memory"] = resources.check_memory(
        model, copy=copy, validate=config.export_onnx and config.validate, what=report.model
    )
    if config.export_onnx:
        resources.check_free_space(
            out_dir, resources.compile_disk_bytes(model), what=f"the outputs of {report.model} (ONNX weights and pruned.pt2)"
        )

    with _stage(report, "copy"):
        work = copy_model(model) if copy else model
        work.eval()
        prep = hf.prepare_model(work, example_inputs, export_opts)
        inputs = prep.args
        report.notes.extend(prep.notes)
        report.capture["inputs"] = prep.record
    ctx = PassContext(inputs, report=report, progress=progress, dump_dir=Path(dump_dir) if dump_dir else None)

    if config.structured_patterns:
        with _stage(report, "structured"):
            work = _structured(work, inputs, config, ctx)

    with _stage(report, "capture"):
        try:
            _run(work, inputs)
        except Exception as e:
            in_dtype = f" in {prep.record['dtype']}" if export_opts.dtype is not None and "dtype" in prep.record else ""
            raise UnsupportedModelError(
                f"{report.model} fails on the given example inputs{in_dtype} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "pass inputs of the shapes and dtypes its forward expects (CLI: --input-shape)"
                + ("; or choose another --dtype" if in_dtype else "")
            ) from e
        cap = capture(work, inputs, progress=progress)
        ctx.capture = cap
        report.capture.update(cap.record())
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
        folded = work if (config.form == "folded" or scripted) else _copy.deepcopy(work)
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
            ctx.masks.clear()  # the zeros are in the weights now: free the bool masks (1 byte per weight)

    onnx_path: Path | None = None
    if config.export_onnx:
        from graphprune.runtime import audit as audit_mod
        from graphprune.runtime import export as export_mod
        from graphprune.runtime import ort

        onnx_path = out_dir / "model.onnx"
        with _stage(report, "export"):
            rec = export_mod.export_onnx(
                folded, inputs, onnx_path, opset=config.opset, input_names=prep.tensor_names or None,
                dynamic=export_opts.dynamic_batch, dynamic_axes=export_opts.dynamic_axes, exporters=export_opts.exporters, progress=progress,
            )
            report.outputs["onnx"] = str(onnx_path)
            report.capture["onnx_exporter"] = rec.exporter
            report.capture["onnx_export"] = rec.attempts
            report.capture["onnx_dynamic_axes"] = {k: {str(a): v for a, v in d.items()} for k, d in rec.dynamic_axes.items()}
            report.notes.extend(rec.notes)
            if rec.external_data:
                report.outputs["onnx_data"] = str(out_dir / rec.external_data[0])
        with _stage(report, "audit"):
            aud = _audit(audit_mod, onnx_path, ctx, rec.initializer_sources)
            report.audit = aud
            validation["audit"] = {"ok": aud["ok"], "summary": aud["summary"]}
        if config.validate:
            with _stage(report, "parity"):
                pstats = ort.check_parity(folded, inputs, onnx_path, batch_sizes="auto", progress=progress)
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
        exported = rec.exported_program if (config.export_onnx and config.form == "folded") else None
        saved = _save_pt2(folded if config.form == "folded" else work, inputs, out_dir / "pruned.pt2", exported=exported)
        if saved:
            report.outputs["pt2"] = str(out_dir / "pruned.pt2")
        else:
            report.notes.append("pruned.pt2 not written: the pruned model could not be re-exported with torch.export")
    report.outputs["report"] = str(out_dir / "report.json")
    report.to_json(out_dir / "report.json")
    del reference
    return CompileResult(model=work, onnx_path=onnx_path, report=report, validation=validation, output_dir=out_dir)


def _attach(err: ValidationError, report: CompileReport) -> ValidationError:
    err.report = report  # type: ignore[attr-defined]
    return err


def prepare_output_dir(out_dir: Path, *, inputs: tuple[Path, ...] = ()) -> None:
    """Create ``out_dir`` and refuse locations that are unwritable or would overwrite an input."""
    outputs = [out_dir / n for n in ("model.onnx", "pruned.pt2", "report.json")]
    for src in inputs:
        src_r = src.resolve()
        if src_r == out_dir.resolve() or any(o.resolve() == src_r for o in outputs):
            raise OutputError(
                f"output {out_dir} would overwrite the input {src}; choose another -o directory"
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output path {out_dir} exists and is not a directory; give a directory with -o")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out_dir, prefix=".graphprune-probe-", delete=True)
        probe.close()
    except OSError as e:
        raise OutputError(f"output directory {out_dir} is not writable: {e.strerror or e}") from e


def _audit(audit_mod: Any, onnx_path: Path, ctx: PassContext, sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Audit the exported ONNX: every pruned site must be found there (by value, through the export
    record's ``sources``) with its own pattern intact (:func:`graphprune.runtime.audit.audit_compiled`)."""
    zeros = {n: ctx.decisions[n].zeros for n in ctx.patterns}
    return audit_mod.audit_compiled(onnx_path, ctx.patterns, zeros, sources, progress=ctx.progress)


def _structured(work: nn.Module, inputs: tuple[Any, ...], config: CompileConfig, ctx: PassContext) -> nn.Module:
    from graphprune.structured import prune_into_report

    res = prune_into_report(work, inputs, config, ctx.report)
    ctx.report.decisions.extend(res.decisions)
    return res.model


def _save_pt2(model: nn.Module, inputs: tuple[Any, ...], path: Path, *, exported: Any = None) -> bool:
    """``exported``: the export stage's ExportedProgram of this very model (same weights, dynamic batch); reused."""
    if isinstance(model, torch.jit.ScriptModule):
        return False
    if exported is not None:
        atomic_write(path, lambda p: torch.export.save(exported, str(p)))
        return True
    try:
        ep = torch.export.export(model, inputs, strict=False)
    except Exception as e:
        log.warning("pruned model could not be re-exported for pruned.pt2: %s", e)
        return False
    atomic_write(path, lambda p: torch.export.save(ep, str(p)))
    return True
