"""Accuracy budget: leave the most sensitive layers dense until fidelity to the dense model meets a bound.

Given the targets compile would prune, calibration batches, evaluation batches (kept apart from the
calibration ones) and a budget — ``max_drift`` (the largest ``1 - mean cosine`` allowed, worst output;
see :mod:`graphprune.runtime.fidelity`) or ``min_cosine`` (= ``1 - max_drift``, a bound on the mean,
not on the worst sample) — :func:`fit_accuracy_budget`:

1. prunes everything (one calibrated run) and measures fidelity; if the budget holds, nothing stays dense;
2. ranks the layers by sensitivity (``ranking``):

   - ``"error"``: the output error each layer's pruning introduces on its calibration inputs, from the
     run in step 1 (free);
   - ``"single"``: the drift when *only* that layer is pruned (one short run per layer: calibration up to
     that layer, one evaluation pass);

   each optionally divided by the layer's share of the pruned weights (``per_weight``): a layer that
   drifts little per zero it brings is worth keeping sparse;
3. binary-searches the number ``k`` of most sensitive layers left dense (``1 + ⌈log2 n⌉`` calibrated
   runs at most, each on a fresh copy of the dense model), assuming more dense layers never drift more;
4. returns the layers kept dense (reason ``accuracy_budget``), the sparsity and the fraction of the
   targets' FLOPs that fall on zeros, and the final fidelity and plan (masks, updated values).

If meeting the budget would leave *every* layer dense — pruning even the least sensitive layer alone
drifts more than allowed — it raises :class:`~graphprune.errors.ValidationError` with the figures.
The budget is checked on the evaluation batches, which then also give the reported fidelity: choose
them representative, and large enough that the choice does not fit their noise.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from graphprune._module_tensors import get_tensor
from graphprune.errors import ConfigError, ValidationError
from graphprune.passes.base import PassContext, PassResult, register_pass
from graphprune.passes.calibrate.apply_plan import skip_reason
from graphprune.passes.calibrate.calibrate import SitesResult, Target, check_calibratable, prune_sites, targets_of
from graphprune.passes.calibrate.driver import CalibrateOptions
from graphprune.report import SkipReason

if TYPE_CHECKING:  # runtime/ imports onnx on first use; `import graphprune` stays light
    from graphprune.runtime.fidelity import FidelityReport

__all__ = [
    "ACCURACY_BUDGET",
    "BudgetOptions",
    "BudgetReport",
    "BudgetResult",
    "BudgetSearch",
    "accuracy_budget",
    "check_budget",
    "fit_accuracy_budget",
]

log = logging.getLogger(__name__)

ACCURACY_BUDGET = SkipReason.ACCURACY_BUDGET.value  # the skip reason of the layers left dense


def check_budget(max_drift: float | None, min_cosine: float | None) -> float:
    """The drift bound from exactly one of ``max_drift`` / ``min_cosine``, each in (0, 1); ConfigError otherwise."""
    if (max_drift is None) == (min_cosine is None):
        raise ConfigError("give exactly one accuracy budget: max_drift (e.g. 0.02) or min_cosine (e.g. 0.98)")
    name, v = ("max_drift", max_drift) if max_drift is not None else ("min_cosine", min_cosine)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v < 1:
        raise ConfigError(
            f"{name} must be a number in (0, 1) (max_drift: the largest 1 - mean cosine to the dense model allowed, "
            f"e.g. 0.02), got {v!r}"
        )
    return float(v) if name == "max_drift" else 1.0 - float(v)


@dataclass
class BudgetResult:
    """The choice :func:`fit_accuracy_budget` made and what it measured."""

    dense: list[str]  # params left dense for the budget, most sensitive first
    max_drift: float
    ranking: list[tuple[str, float]]  # (param, sensitivity score), most sensitive first
    ranking_kind: str
    sparsity: float  # zeros / weights over all targets
    flops_on_zeros: float  # fraction of the targets' FLOPs that multiply zeros
    fidelity: FidelityReport
    masks: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    values: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)  # weights after pruning (pruned sites)
    kept_magnitude: dict[str, float] = field(default_factory=dict)  # of the dense weight, per pruned site
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)  # {"dense": k, "drift": ..., "mean_cosine": ...}
    reason: str = ACCURACY_BUDGET

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_drift": self.max_drift,
            "reason": self.reason,
            "dense": self.dense,
            "ranking": self.ranking_kind,
            "scores": [[p, s] for p, s in self.ranking],
            "sparsity": self.sparsity,
            "flops_on_zeros": self.flops_on_zeros,
            "trials": self.trials,
            "fidelity": self.fidelity.to_dict(),
        }

    def summary(self) -> str:
        return (
            f"accuracy budget max_drift {self.max_drift:g}: {len(self.dense)} of {len(self.ranking)} layers left dense, "
            f"sparsity {self.sparsity:.1%} of the prunable weights, {self.flops_on_zeros:.1%} of their FLOPs on zeros; "
            f"drift {self.fidelity.drift:.4f} (mean cosine {self.fidelity.mean_cosine:.4f})"
        )


class BudgetSearch:
    """The search behind :func:`fit_accuracy_budget`, reusable across budgets (trials are cached by the
    number of layers left dense, so fitting 0.01, 0.02 and 0.05 shares the runs they have in common).

    Only the fidelity and the zero counts of a trial are kept, plus the pruned weights of the trial that
    :meth:`fit` returns; ``model`` is never modified.
    """

    def __init__(
        self,
        model: nn.Module,
        targets: Mapping[str, Target],
        calibration: Sequence[Any],
        evaluation: Sequence[Any],
        *,
        options: CalibrateOptions | None = None,
        ranking: Literal["error", "single"] = "error",
        per_weight: bool = True,
        flops: Mapping[str, int] | None = None,
        reference: Any = None,
        logits: Sequence[str | int] = (),
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if ranking not in ("error", "single"):
            raise ConfigError(f"ranking must be 'error' or 'single', got {ranking!r}")
        if not targets:
            raise ConfigError("the accuracy budget has no layers to choose from: nothing is pruned")
        self.model, self.targets = model, dict(targets)
        self.calibration, self.evaluation = calibration, evaluation
        self.opts = options or CalibrateOptions()
        self.reference, self.logits = reference, logits
        self.say = progress or (lambda _msg: None)
        self.names = list(targets)
        self.numel = {n: get_tensor(model, n).numel() for n in self.names}
        self.cost = {n: (flops or {}).get(n) or self.numel[n] for n in self.names}
        self.trials: dict[int, dict[str, Any]] = {}
        self.ranking_kind = ranking + ("/weight" if per_weight else "")
        self._kept: tuple[int, nn.Module, SitesResult] | None = None
        first = self._trial(0, set())  # everything pruned; also gives the per-layer errors
        if ranking == "error":
            scores = {n: float(first[1].layers.get(n, {}).get("output_error") or 0.0) ** 2 for n in self.names}
        else:
            scores = {}
            for n in self.names:
                f1 = self._run(set(self.names) - {n})[2]
                scores[n] = f1.drift
                self.say(f"accuracy budget: only {n} pruned -> drift {f1.drift:.5f}")
        if per_weight:
            total = sum(self.numel.values())
            scores = {n: sc / (self.numel[n] / total) for n, sc in scores.items()}
        self.scores = scores
        self.order = sorted(self.names, key=lambda n: -scores[n])

    def _run(self, dense: set[str]) -> tuple[nn.Module, SitesResult, FidelityReport]:
        from graphprune.runtime.fidelity import measure_fidelity

        work = copy.deepcopy(self.model)
        todo = {n: t for n, t in self.targets.items() if n not in dense}
        opts = self.opts if not self.trials else dataclasses.replace(self.opts, preflight=False)  # batches checked once
        res = prune_sites(work, todo, self.calibration, opts, reference=self.reference)
        fid = measure_fidelity(self.model, work, self.evaluation, logits=self.logits)
        return work, res, fid

    def _trial(self, k: int, dense: set[str]) -> tuple[nn.Module, SitesResult, FidelityReport]:
        work, res, fid = self._run(dense)
        zeros = {n: int((get_tensor(work, n).detach() == 0).sum()) for n in self.names if n not in dense}
        self.trials[k] = {"dense": k, "drift": fid.drift, "mean_cosine": fid.mean_cosine, "fidelity": fid, "zeros": zeros}
        self.say(f"accuracy budget: {k} layer(s) dense -> drift {fid.drift:.4f}")
        self._kept = (k, work, res)
        return work, res, fid

    def _get(self, k: int) -> dict[str, Any]:
        if k not in self.trials:
            self._trial(k, set(self.order[:k]))
        return self.trials[k]

    def fit(self, bound: float) -> BudgetResult:
        """The smallest number of most sensitive layers left dense whose drift is ``<= bound``."""
        from graphprune.runtime.fidelity import LayerError

        n = len(self.order)
        held = self._kept if self._kept is not None and self._kept[0] == 0 else None
        if self._get(0)["drift"] <= bound:
            k = 0
        else:
            lo, hi = 1, n  # the answer is in [lo, hi]; hi = every layer dense
            while lo < hi:
                mid = (lo + hi) // 2
                if self._get(mid)["drift"] <= bound:
                    hi = mid
                    if self._kept is not None and self._kept[0] == mid:
                        held = self._kept  # the pruned copy of the smallest feasible k so far
                else:
                    lo = mid + 1
            if lo >= n:
                full = self.trials[0]
                single = self.trials.get(n - 1)
                figures = f"; with only {self.order[-1]} pruned the drift is {single['drift']:.4f}" if single else ""
                raise ValidationError(
                    f"accuracy budget max_drift {bound:g} (mean cosine >= {1 - bound:.4f}) cannot be met by pruning any "
                    f"layer: all {n} pruned drift {full['drift']:.4f} (mean cosine {full['mean_cosine']:.4f}){figures}. "
                    "Raise the budget, calibrate with more data, or choose a milder pattern"
                )
            k = lo
        if held is None or held[0] != k:  # the pruned weights of that trial were not kept: rerun it
            self._trial(k, set(self.order[:k]))
            held = self._kept
        assert held is not None
        _, work, res = held
        t = self.trials[k]
        dense = self.order[:k]
        pruned = [m for m in self.names if m not in dense]
        layer_errs = [
            LayerError(m, float(r["output_error"]), str(r.get("method", "")), int(r.get("rows") or 0))
            for m, r in res.layers.items()
            if r.get("output_error") is not None
        ]
        total = sum(self.numel.values())
        return BudgetResult(
            dense=dense,
            max_drift=bound,
            ranking=[(m, self.scores[m]) for m in self.order],
            ranking_kind=self.ranking_kind,
            sparsity=sum(t["zeros"][m] for m in pruned) / total if total else 0.0,
            flops_on_zeros=sum(self.cost[m] * t["zeros"][m] / self.numel[m] for m in pruned) / sum(self.cost.values()),
            fidelity=t["fidelity"].with_layers(layer_errs),
            masks=res.masks,
            values={m: get_tensor(work, m).detach().clone() for m in res.masks},
            kept_magnitude=res.kept_magnitude,
            layers=dict(res.layers),
            trials=[{key: v for key, v in tr.items() if key in ("dense", "drift", "mean_cosine")} for _, tr in sorted(self.trials.items())],
        )


def fit_accuracy_budget(
    model: nn.Module,
    targets: Mapping[str, Target],
    calibration: Sequence[Any],
    evaluation: Sequence[Any],
    *,
    options: CalibrateOptions | None = None,
    max_drift: float | None = None,
    min_cosine: float | None = None,
    ranking: Literal["error", "single"] = "error",
    per_weight: bool = True,
    flops: Mapping[str, int] | None = None,
    reference: Any = None,
    logits: Sequence[str | int] = (),
    progress: Callable[[str], None] | None = None,
) -> BudgetResult:
    """See the module docstring. ``model`` is the dense model and is not modified (every trial prunes a copy).

    ``targets``: param fqn -> :class:`Target` (compile: :func:`~graphprune.passes.calibrate.calibrate.targets_of`).
    ``calibration`` / ``evaluation``: checked batches of positional inputs. ``flops``: param -> FLOPs (default:
    the weight's element count, proportional for a Linear at fixed tokens).
    """
    bound = check_budget(max_drift, min_cosine)
    search = BudgetSearch(
        model,
        targets,
        calibration,
        evaluation,
        options=options,
        ranking=ranking,
        per_weight=per_weight,
        flops=flops,
        reference=reference,
        logits=logits,
        progress=progress,
    )
    return search.fit(bound)


@dataclass(frozen=True, kw_only=True)
class BudgetOptions:
    """Options of the ``accuracy-budget`` pass: the bound (``max_drift`` or ``min_cosine``), the calibration
    options of every trial, and the sensitivity ranking."""

    max_drift: float | None = None
    min_cosine: float | None = None
    options: CalibrateOptions = field(default_factory=CalibrateOptions)
    ranking: Literal["error", "single"] = "error"

    def __post_init__(self) -> None:
        check_budget(self.max_drift, self.min_cosine)
        if self.ranking not in ("error", "single"):
            raise ConfigError(f"BudgetOptions.ranking must be 'error' or 'single', got {self.ranking!r}")

    @property
    def bound(self) -> float:
        return check_budget(self.max_drift, self.min_cosine)


@dataclass(frozen=True)
class BudgetReport:
    result: BudgetResult

    def to_dict(self) -> dict[str, Any]:
        d = self.result.to_dict()
        d["layers"] = self.result.layers
        return d


@register_pass("accuracy-budget", mutates=("weights",), options=BudgetOptions)
def accuracy_budget(module: nn.Module, options: BudgetOptions, ctx: PassContext) -> PassResult:
    """Leave the most sensitive layers dense until fidelity to the dense model meets the budget (runs
    instead of ``calibrate`` / ``compute-masks``).

    :func:`fit_accuracy_budget` on the working module (still dense here; every trial prunes a copy), then
    the chosen masks (and SparseGPT values) are written into it and ``ctx.masks``; the layers left dense
    leave ``ctx.patterns`` and their decisions say why (reason ``accuracy_budget``). Calibration and
    evaluation batches come from ``ctx.artifacts["calibration"]`` (the ``calibration-data`` stage);
    magnitude trials need only the evaluation batches.
    """
    from graphprune.passes.calibrate.calibrate import calibration_batches

    opts = options.options
    check_calibratable(dict(ctx.patterns), opts.method)
    data = ctx.artifacts.get("calibration")
    evaluation = list(getattr(data, "evaluation", None) or [tuple(ctx.example_inputs)])
    calibration = calibration_batches(ctx) if opts.method != "magnitude" else []
    flops = {n: ctx.sites[n].flops for n in ctx.patterns if ctx.sites[n].flops}
    result = fit_accuracy_budget(
        module,
        targets_of(ctx),
        calibration,
        evaluation,
        options=opts,
        max_drift=options.max_drift,
        min_cosine=options.min_cosine,
        ranking=options.ranking,
        flops=flops or None,
        reference=ctx.example_inputs,
    )
    rank = {n: i + 1 for i, (n, _s) in enumerate(result.ranking)}
    for n in result.dense:
        del ctx.patterns[n]
        d = ctx.decisions[n]
        d.pruned, d.pattern, d.zeros = False, None, 0
        d.reason = skip_reason(ACCURACY_BUDGET)
        d.message = (
            f"layer {d.module} ({n}) left dense by the accuracy budget (max_drift {result.max_drift:g}; "
            f"sensitivity rank {rank[n]} of {len(rank)})"
        )
    with torch.no_grad():
        for n, mask in result.masks.items():
            w = get_tensor(module, n)
            w.copy_(result.values[n].to(w.device))
            ctx.masks[n] = mask
            d = ctx.decisions[n]
            d.zeros = int((w == 0).sum())
            d.kept_magnitude = result.kept_magnitude.get(n)
    ctx.artifacts["budget_fidelity"] = result.fidelity
    return PassResult(module, modified=bool(result.masks), report=BudgetReport(result))
