"""Pass ``calibrate``: masks from calibration data (Wanda / SparseGPT) for the sites compile prunes.

IR: the working ``nn.Module`` (the pipeline's copy). Pre: ``ctx.patterns`` (param fqn -> element
pattern, decided by compile) and ``ctx.sites`` (owning module, K axis); the calibration batches
(positional inputs shaped like ``ctx.example_inputs``) in ``ctx.artifacts["calibration"]``, left there by
the ``calibration-data`` stage (:mod:`.data`). Post: ``ctx.masks[param]`` is a bool keep-mask of
the weight's shape for every entry of ``ctx.patterns``; with SparseGPT (or ``refit``) the kept weights
are updated in place on the working module (the OBS / least-squares correction), and every pruned
weight is zero. Later passes (apply / fold masks, export, audit, parity) run unchanged: they read
``ctx.masks``, and folding zeros the already zero entries again. Each decision gets ``zeros`` and
``kept_magnitude`` (of the dense weight, as ``compute_masks`` gives).

The maths runs in :func:`graphprune.passes.calibrate.driver.prune_layers`, the one implementation
``prune_oneshot`` also runs, layer group by layer group with bounded memory. A site the driver
cannot calibrate (its weight is read by a functional op or ``nn.MultiheadAttention`` rather than a
``Linear`` / ``Conv1d`` / ``Conv2d`` / transformers ``Conv1D`` module — e.g. a model loaded from ``.pt2``
is a graph without those modules —, or the calibration batches never reach it) still gets the pattern
compile decided, by magnitude; the report says which and why.

Report (:class:`CalibrateReport`): ``method``, ``batches``, ``rows``, ``fallback`` (sites masked by
magnitude, with reasons) and ``layers`` (param -> method, output error ``||W X - W' X|| / ||W X||`` on
its calibration inputs, calibration rows). :func:`layer_errors` turns the record into
:class:`~graphprune.runtime.fidelity.LayerError` rows for the fidelity report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from graphprune import sparsity
from graphprune._module_tensors import get_tensor
from graphprune.analysis.module_sites import SiteEntry
from graphprune.config import ElementPattern, SemiStructured, Unstructured
from graphprune.errors import ConfigError
from graphprune.passes.base import PassContext, PassResult, register_pass
from graphprune.passes.calibrate.batches import materialize
from graphprune.passes.calibrate.driver import METHODS, CalibrateOptions, prune_layers, weight_scores
from graphprune.passes.permute_channels import PermuteChannelsConfig, permute_for_patterns

if TYPE_CHECKING:  # runtime/ imports onnx on first use; `import graphprune` stays light
    from graphprune.runtime.fidelity import LayerError

__all__ = [
    "CalibrateReport",
    "CalibrateStage",
    "SitesResult",
    "Target",
    "calibrate",
    "calibration_batches",
    "check_calibratable",
    "choose_method",
    "layer_errors",
    "prune_sites",
    "targets_of",
]


def choose_method(method: str | None, has_calibration: bool) -> str:
    """The one rule for compile's method: with calibration data and no method, ``sparsegpt``; without it,
    ``magnitude``; ``wanda`` / ``sparsegpt`` without calibration data is a ConfigError."""
    if method is None:
        return "sparsegpt" if has_calibration else "magnitude"
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if method != "magnitude" and not has_calibration:
        raise ConfigError(
            f"method {method!r} needs calibration data: give --calib SOURCE (API: calibration=batches), "
            "or use --method magnitude"
        )
    return method


def check_calibratable(patterns: dict[str, ElementPattern], method: str) -> None:
    """ConfigError for patterns a calibrated method cannot compute (before any work)."""
    if method == "magnitude":
        return
    for name, p in patterns.items():
        if isinstance(p, Unstructured) and p.scope == "global":
            raise ConfigError(
                f"method {method!r} prunes every layer to its own sparsity; pattern {p} (scope='global') ranks all "
                f"layers by magnitude together ({name}): use scope 'layer' or method 'magnitude'"
            )
        if isinstance(p, Unstructured) and p.method == "random":
            raise ConfigError(f"method {method!r} chooses masks from calibration data; pattern {p} asks for random masks ({name})")
        if isinstance(p, SemiStructured) and p.method != "1d":
            raise ConfigError(
                f"method {method!r} supports 1-D N:M; pattern {p} (SemiStructured.method={p.method!r}) on {name}: "
                "use method 'magnitude' for 2-D N:M"
            )


@dataclass(frozen=True)
class Target:
    """One weight to prune: its owning module's fqn, its K axis and its pattern."""

    module: str
    k_axis: int
    pattern: ElementPattern


@dataclass
class SitesResult:
    """What :func:`prune_sites` did: masks, per-layer records and the sites masked by magnitude instead."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    fallback: dict[str, str] = field(default_factory=dict)
    kept_magnitude: dict[str, float] = field(default_factory=dict)


def targets_of(ctx: PassContext) -> dict[str, Target]:
    """The weights compile decided to prune (``ctx.patterns``), as targets."""
    return {name: Target(ctx.sites[name].module, ctx.sites[name].k_axis, p) for name, p in ctx.patterns.items()}


def _entry(module: nn.Module, param: str, t: Target) -> tuple[SiteEntry | None, str]:
    owner = t.module
    try:
        sub = module.get_submodule(owner) if owner else module
    except AttributeError:
        return None, f"its module {owner!r} is not a submodule of the working model"
    pname = param[len(owner) + 1 :] if owner else param
    if "." in pname or getattr(sub, pname, None) is None:
        return None, f"the weight is not a direct parameter of module {owner or '<root>'!r}"
    return SiteEntry(name=owner, module=sub, param_name=pname, k_axis=t.k_axis), ""


def prune_sites(
    module: nn.Module,
    targets: Mapping[str, Target],
    batches: Sequence[Any],
    options: CalibrateOptions,
    *,
    reference: Any = None,
) -> SitesResult:
    """Prune ``targets`` of ``module`` in place: calibrated where the driver can, by magnitude elsewhere.

    ``batches`` are already checked (:func:`~graphprune.passes.calibrate.batches.materialize`). Every
    target ends with a mask in the result and zeros in its weight (SparseGPT / refit: updated kept values).
    """
    out = SitesResult()
    for name, t in targets.items():
        sparsity.check_finite(get_tensor(module, name).detach(), f"{name} (layer {t.module})")
    entries: list[SiteEntry] = []
    for name, t in targets.items():
        e, why = _entry(module, name, t)
        if e is None:
            out.fallback[name] = why
        else:
            entries.append(e)
    plan = prune_layers(
        module,
        entries,
        None,
        patterns={e.fqn: targets[e.fqn].pattern for e in entries},
        options=options,
        batches=list(batches),
        reference=reference,
    )
    for sk in plan.skipped:
        out.fallback[sk["param"]] = f"{sk['reason']}: {sk['message']}"
    for name, site in plan.sites.items():
        out.masks[name] = site.mask.to(get_tensor(module, name).device)
        out.kept_magnitude[name] = float(site.extra.get("kept_magnitude", 1.0))
        out.layers[name] = {
            "method": options.method,
            "output_error": site.extra.get("output_error"),
            "rows": site.extra.get("calibration_rows", 0),
        }
    for name, why in out.fallback.items():
        w = get_tensor(module, name).detach()
        mask = sparsity.compute_mask(w, targets[name].pattern, axis=targets[name].k_axis)
        out.masks[name] = mask
        out.kept_magnitude[name] = sparsity.kept_magnitude(w, mask)
        with torch.no_grad():
            w.mul_(mask.to(w.dtype))
        out.layers[name] = {"method": "magnitude", "output_error": None, "rows": 0, "fallback": why}
    return out


@dataclass(frozen=True, kw_only=True)
class CalibrateStage:
    """Options of the ``calibrate`` pass: the driver's :class:`CalibrateOptions` and, for ``--permute``,
    the permutation to run first on the method's own scores (compile then skips its permute stage)."""

    options: CalibrateOptions = field(default_factory=CalibrateOptions)
    permute: PermuteChannelsConfig | None = None


@dataclass(frozen=True)
class CalibrateReport:
    method: str
    options: dict[str, Any]
    batches: int
    rows: int
    calibrated: int
    fallback: dict[str, str]
    layers: dict[str, dict[str, Any]]
    permute: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "options": self.options,
            "batches": self.batches,
            "rows": self.rows,
            "calibrated": self.calibrated,
            "fallback": self.fallback,
            "layers": self.layers,
            "permute": self.permute,
            "notes": list(self.notes),
        }


def calibration_batches(ctx: PassContext) -> list[Any]:
    """The calibration batches the ``calibration-data`` stage left in ``ctx.artifacts``."""
    data = ctx.artifacts.get("calibration")
    if data is None or getattr(data, "calibration", None) is None:
        raise ConfigError(
            "calibrated masks need calibration data: give --calib SOURCE (API: calibration=batches); the "
            "'calibration-data' stage must run before 'calibrate'"
        )
    return list(data.calibration)


@register_pass("calibrate", mutates=("weights",), options=CalibrateStage)
def calibrate(module: nn.Module, options: CalibrateStage, ctx: PassContext) -> PassResult:
    """Compute masks from calibration data (Wanda / SparseGPT) and update the kept weights in place."""
    opts = options.options
    if opts.method == "magnitude":
        raise ConfigError("the calibrate stage runs Wanda or SparseGPT; method 'magnitude' is the compute-masks stage")
    check_calibratable(dict(ctx.patterns), opts.method)
    batches = materialize(calibration_batches(ctx), opts.max_batches, reference=ctx.example_inputs)
    permuted: dict[str, Any] | None = None
    if options.permute is not None and isinstance(ctx.config.element_pattern, SemiStructured):
        entries = [e for e in (_entry(module, n, t)[0] for n, t in targets_of(ctx).items()) if e is not None]
        scores = weight_scores(module, entries, batches)
        permuted = permute_for_patterns(module, options.permute, ctx, scores=scores).to_dict()
    res = prune_sites(module, targets_of(ctx), batches, opts, reference=ctx.example_inputs)
    for name, mask in res.masks.items():
        ctx.masks[name] = mask
        d = ctx.decisions[name]
        d.kept_magnitude = res.kept_magnitude[name]
        d.zeros = int((get_tensor(module, name).detach() == 0).sum())
    rows = sum(int(v["rows"] or 0) for v in res.layers.values())
    calibrated = len(res.layers) - len(res.fallback)
    notes: list[str] = []
    if ctx.capture is not None and ctx.capture.method == "walk":
        notes.append(
            "the capture was the module walk (no graph): calibration still runs, through forward hooks on "
            "Linear / Conv1d / Conv2d / transformers Conv1D modules; other weights are masked by magnitude"
        )
    if res.fallback and not calibrated:
        notes.append(
            f"no layer could be calibrated ({len(res.fallback)} masked by magnitude): calibration hooks need the "
            "weights to live in torch.nn Linear / Conv1d / Conv2d or transformers Conv1D modules — a model loaded "
            "from .pt2 or TorchScript has none; compile the Python model (a package.module:factory) instead"
        )
    report = CalibrateReport(
        method=opts.method,
        options=opts.to_dict(),
        batches=len(batches),
        rows=rows,
        calibrated=calibrated,
        fallback=res.fallback,
        layers=res.layers,
        permute=permuted,
        notes=tuple(notes),
    )
    return PassResult(module, modified=bool(res.masks) or permuted is not None, report=report)


def layer_errors(report: dict[str, Any]) -> list[LayerError]:
    """The per-layer output errors of a ``calibrate`` pass report, for :class:`FidelityReport.layers`."""
    from graphprune.runtime.fidelity import LayerError
    out = []
    for name, rec in report.get("layers", {}).items():
        if rec.get("output_error") is not None:
            out.append(LayerError(name, float(rec["output_error"]), str(rec.get("method", "")), int(rec.get("rows") or 0)))
    return out
