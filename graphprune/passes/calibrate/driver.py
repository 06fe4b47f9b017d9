"""The one layer-by-layer driver of calibrated one-shot pruning (Wanda, SparseGPT, magnitude).

Both front ends run it: the ``calibrate`` pass of ``graphprune.compile`` and
``graphprune.training.oneshot.prune_oneshot``. :func:`prune_layers` prunes the given layers of a
model in place and returns a :class:`~graphprune.plan.Plan` (masks, optional permutations and, for
SparseGPT, the updated weight values).

Bounded memory: layers are grouped (by default by transformer block — the fqn up to its first
numeric component, ``encoder.layer.3``), groups are processed in execution order, and for each
group the calibration batches are run through the model with forward pre-hooks on that group's
layers only. The hooks accumulate per-layer statistics — ``Σx²`` per input feature (Wanda without
error measurement) or ``XᵀX`` (``K×K``) — never the activations themselves. The group is then pruned
in place, so later groups see the outputs of already pruned layers (``sequential``; SparseGPT's
scheme). With ``early_exit`` the forward pass stops once the group's last layer has run.

SparseGPT, per layer (``search="admm"``, the default): SparseGPT's greedy OBS pass gives a first mask;
ADMM on ``||(W − W') X||²`` then lets mask and weights move together (it can revisit groups the greedy
left-to-right pass fixed early); finally the kept weights of every row are solved exactly by least
squares against ``H`` (``refit``). ``search="obs"`` stops after SparseGPT (refitted when ``refit``).
Before any layer is pruned, a preflight runs every batch through the model with each layer's input
checked, so a bad batch fails (InputError naming it) before any weight changes.

Per layer the plan records ``output_error`` = ``||W X − W' X||_F / ||W X||_F`` on the layer's own
calibration inputs (from ``XᵀX``; with ``layer_errors``), ``calibration_rows`` and the method.

Conv layers (``Conv1d``/``Conv2d``, groups=1, zero padding) are linear maps on unfolded patches (see
:mod:`.layers`). Layers calibration cannot handle (grouped/3-D/transposed convs, layers the batches
never reach, K not divisible by M) are left alone and listed in ``plan.skipped`` with a reason; the
caller decides (``prune_oneshot`` leaves them dense, the compile pass falls back to magnitude).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from graphprune.analysis.module_sites import SiteEntry
from graphprune.config import SemiStructured, Unstructured
from graphprune.errors import ConfigError, GraphPruneError, InputError
from graphprune.passes.calibrate.batches import default_forward, describe_batch, materialize, to_device
from graphprune.passes.calibrate.layers import Layer, layer_for
from graphprune.plan import Plan, PlanSite
from graphprune.sparsity.calibrated import (
    HessianAccumulator,
    InputNormAccumulator,
    admm_prune,
    gram_output_error,
    refit_kept,
    sparsegpt_prune,
    wanda_mask,
)

__all__ = ["METHODS", "CalibrateOptions", "Method", "block_of", "prune_layers", "weight_scores"]

log = logging.getLogger(__name__)

Method = Literal["magnitude", "wanda", "sparsegpt"]
METHODS: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")
ElementPattern = SemiStructured | Unstructured
_BLOCK = re.compile(r"^(.*?\.\d+)(?:\.|$)")


def block_of(fqn: str) -> str:
    """Default grouping: the fqn up to its first numeric component (``encoder.layer.3``), else itself."""
    m = _BLOCK.match(fqn)
    return m.group(1) if m else fqn


GROUPINGS: dict[str, Callable[[str], str]] = {
    "block": block_of,  # one transformer block (or top-level module) at a time
    "parent": lambda fqn: fqn.rpartition(".")[0],  # layers sharing a parent: q/k/v together, then o, up, down
    "layer": lambda fqn: fqn,  # every layer on the outputs of all layers pruned before it
}


@dataclass(frozen=True, kw_only=True)
class CalibrateOptions:
    """How calibrated pruning runs (see the module docstring).

    ``method``: ``"sparsegpt"`` (OBS updates of the kept weights), ``"wanda"`` (|W|·||x_j||₂ scores,
    weights unchanged unless ``refit``) or ``"magnitude"`` (no calibration data needed).
    ``sequential``: calibrate each group on the outputs of the groups pruned before it (False: every
    statistic from one pass over the dense model). ``group_by``: ``"block"``, ``"parent"`` or ``"layer"``.
    ``blocksize`` / ``percdamp``: SparseGPT's column block and damping (fraction of mean diag H).
    ``refit``: exact least squares over the kept weights after the mask is chosen (None: on for SparseGPT).
    ``layer_errors``: measure each layer's relative output error (Wanda then keeps ``K×K`` statistics).
    ``max_batches``: use at most this many calibration batches.
    ``preflight``: run every batch through the model once before any layer is pruned, so a batch the
    model cannot take fails (InputError naming it) before any weight changes.
    ``permutation``: per-layer K permutation recorded in the plan (training side only: compile folds
    permutations with its own pass).
    ``search`` (SparseGPT): ``"admm"`` (default) starts from SparseGPT's mask (``admm_init="obs"``; or
    Wanda's) and refines mask and weights by ADMM (``admm_iterations`` steps, penalty ``admm_rho`` growing
    by ``admm_growth``; see ``sparsity.calibrated.admm_prune``), then refits exactly; ``"obs"`` keeps
    SparseGPT's own greedy mask (refitted when ``refit``). Measured on MiniLM 2:4 (benchmarks/RESULTS.md,
    issue 12): embedding cosine SparseGPT 0.905, + refit 0.936, ADMM 0.947.
    """

    method: Method = "sparsegpt"
    sequential: bool = True
    group_by: Literal["block", "parent", "layer"] = "block"
    early_exit: bool = True
    blocksize: int = 128
    percdamp: float = 0.01
    refit: bool | None = None
    layer_errors: bool = True
    max_batches: int | None = None
    preflight: bool = True
    permutation: bool = False
    permutation_time_budget_s: float = 1.0
    search: Literal["obs", "admm"] = "admm"
    admm_iterations: int = 30
    admm_rho: float = 0.1
    admm_growth: float = 1.3
    admm_init: Literal["obs", "wanda"] = "obs"

    def __post_init__(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"CalibrateOptions.{name} must be one of {', '.join(map(repr, allowed))}; got {getattr(self, name)!r}"
                )

        choice("method", METHODS)
        choice("group_by", tuple(GROUPINGS))
        choice("search", ("obs", "admm"))
        choice("admm_init", ("obs", "wanda"))
        if isinstance(self.blocksize, bool) or not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise ConfigError(f"CalibrateOptions.blocksize must be an int >= 1, got {self.blocksize!r}")
        p = self.percdamp
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 <= p < 10):
            raise ConfigError(f"CalibrateOptions.percdamp must be a number in [0, 10), got {p!r}")
        mb = self.max_batches
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int) or mb < 1):
            raise ConfigError(f"CalibrateOptions.max_batches must be None or an int >= 1, got {mb!r}")
        b = self.permutation_time_budget_s
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not b >= 0:
            raise ConfigError(f"CalibrateOptions.permutation_time_budget_s must be seconds >= 0, got {b!r}")
        it = self.admm_iterations
        if isinstance(it, bool) or not isinstance(it, int) or it < 0:
            raise ConfigError(f"CalibrateOptions.admm_iterations must be an int >= 0, got {it!r}")
        for name, low in (("admm_rho", 0.0), ("admm_growth", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low or (low == 0 and v == 0):
                raise ConfigError(f"CalibrateOptions.{name} must be a finite number {'> 0' if low == 0 else '>= 1'}, got {v!r}")

    @property
    def refits(self) -> bool:
        return (self.method == "sparsegpt") if self.refit is None else bool(self.refit and self.method != "magnitude")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CalibrateOptions:
        """The options from :meth:`to_dict`'s JSON (ConfigError naming unknown fields)."""
        from dataclasses import fields

        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown CalibrateOptions field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(d))


class _StopForward(Exception):
    pass


# --------------------------------------------------------------------------- the driver


def prune_layers(
    model: nn.Module,
    entries: Sequence[SiteEntry],
    calibration: Iterable[Any] | None,
    *,
    patterns: ElementPattern | Mapping[str, ElementPattern],
    options: CalibrateOptions | None = None,
    forward: Callable[[nn.Module, Any], Any] = default_forward,
    group_key: Callable[[str], str] | None = None,
    reference: Any = None,
    batches: list[Any] | None = None,
) -> Plan:
    """Prune ``entries`` of ``model`` in place with calibration data; return the plan (module docstring).

    ``patterns``: one pattern for every layer, or param fqn -> pattern (layers without one are not
    pruned). ``group_key``: overrides ``options.group_by`` with ``fn(module_fqn) -> group``.
    ``reference``: a batch every calibration batch must look like (compile's example inputs).
    ``batches``: already checked batches (``calibration`` is then not read).
    """
    opts = options or CalibrateOptions()
    method = opts.method
    group_of = group_key or GROUPINGS[opts.group_by]
    per_layer: dict[str, ElementPattern] = (
        dict(patterns) if isinstance(patterns, Mapping) else {e.fqn: patterns for e in entries}
    )
    for fqn, pat in per_layer.items():
        if not isinstance(pat, (SemiStructured, Unstructured)):
            raise ConfigError(f"calibrated pruning takes SemiStructured(...) or Unstructured(...) patterns, got {pat!r} for {fqn}")
        if isinstance(pat, SemiStructured) and pat.method != "1d":
            raise ConfigError(
                f"calibrated pruning ({method}) supports 1-D N:M, got SemiStructured.method={pat.method!r} for {fqn}"
            )
    if opts.permutation and any(not isinstance(p, SemiStructured) for p in per_layer.values()):
        raise ConfigError("permutation=True needs an N:M pattern (SemiStructured)")
    plan = Plan(meta={"method": method, "options": opts.to_dict()})
    layers: list[Layer] = []
    for e in entries:
        pattern = per_layer.get(e.fqn)
        if pattern is None:
            continue
        m = getattr(pattern, "m", None)
        k = e.param.shape[e.k_axis]
        if m is not None and k % m:
            plan.skip(e.fqn, "k_not_divisible", f"K={k} (axis {e.k_axis}) is not divisible by M={m}")
            continue
        layer, why = layer_for(e)
        if layer is None:
            plan.skip(e.fqn, "unsupported_op", why)
            continue
        layer.extra["pattern"] = pattern
        layers.append(layer)

    if method == "magnitude":
        for layer in layers:
            _prune_layer(layer, plan, opts)
        return plan

    if batches is None:
        batches = materialize(calibration, opts.max_batches, reference=reference)
    elif opts.max_batches is not None:
        batches = batches[: opts.max_batches]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        if opts.preflight:
            _preflight(model, layers, batches, forward, device)
        order = _execution_order(model, layers, batches[0], forward, device) if opts.sequential else {}
        unreached = [ly for ly in layers if opts.sequential and ly.entry.fqn not in order]
        for ly in unreached:
            plan.skip(ly.entry.fqn, "not_reached", "the layer did not run on the first calibration batch")
        reached = [ly for ly in layers if ly not in unreached]
        if opts.sequential:
            groups: dict[str, list[Layer]] = {}
            for ly in sorted(reached, key=lambda ly: order[ly.entry.fqn][0]):
                groups.setdefault(group_of(ly.entry.name), []).append(ly)
            group_list = list(groups.values())
        else:
            group_list = [reached]
        for gi, group in enumerate(group_list):
            if not group:
                continue
            log.info(
                "calibrated %s: group %d/%d (%s, %d layers)",
                method,
                gi + 1,
                len(group_list),
                group_of(group[0].entry.name),
                len(group),
            )
            _calibrate(model, group, batches, forward, device, opts, order if (opts.sequential and opts.early_exit) else None)
            for ly in group:
                if ly.calls == 0:
                    plan.skip(ly.entry.fqn, "not_reached", "the layer did not run on the calibration batches")
                    continue
                _prune_layer(ly, plan, opts)
                ly.stat = None  # free the K×K / K statistics before the next group
    finally:
        model.train(was_training)
    return plan


@torch.no_grad()
def weight_scores(
    model: nn.Module,
    entries: Sequence[SiteEntry],
    batches: list[Any],
    forward: Callable[[nn.Module, Any], Any] = default_forward,
) -> dict[str, torch.Tensor]:
    """The calibrated methods' importance of every weight element, ``|W| · ||x_j||₂`` (Wanda's score; the
    permutation search of SparseGPT too), from one pass of ``batches`` over the model as it is.

    param fqn -> tensor of the weight's shape; layers the hooks cannot see are left out (their search
    falls back to ``|W|``). Used to search channel permutations on the method's own scores.
    """
    layers = [ly for ly in (layer_for(e)[0] for e in entries) if ly is not None]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for ly in layers:
        ly.stat = InputNormAccumulator(ly.k, ly.entry.param.device)
    handles = []
    for ly in layers:

        def pre(_m: nn.Module, args: tuple[Any, ...], ly: Layer = ly) -> None:
            if args and isinstance(args[0], torch.Tensor) and ly.check_input(args[0]) is None:
                assert isinstance(ly.stat, InputNormAccumulator)
                ly.stat.add(ly.rows(args[0].detach()))

        handles.append(ly.entry.module.register_forward_pre_hook(pre))
    was_training = model.training
    model.eval()
    try:
        for i, b in enumerate(batches):
            _run(model, forward, b, i, device)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    out: dict[str, torch.Tensor] = {}
    for ly in layers:
        assert isinstance(ly.stat, InputNormAccumulator)
        if ly.stat.rows == 0:
            continue
        wv = ly.view(ly.entry.param.detach()).abs().float()
        shape = [1] * wv.dim()
        shape[ly.axis] = ly.k
        out[ly.entry.fqn] = ly.unview(wv * ly.stat.norm().to(wv.device).reshape(shape), ly.entry.param.shape)
        ly.stat = None
    return out


def _run(
    model: nn.Module, forward: Callable[[nn.Module, Any], Any], batch: Any, index: int, device: torch.device
) -> None:
    try:
        with torch.no_grad():
            forward(model, to_device(batch, device))
    except (_StopForward, GraphPruneError):
        raise
    except Exception as e:  # the user's model failed on this batch: say which batch and inputs
        raise InputError(
            f"calibration batch {index} ({describe_batch(batch)}) failed in the model's forward: {type(e).__name__}: {e}"
        ) from e


def _input_error(ly: Layer, args: tuple[Any, ...], index: int, batch: Any) -> InputError | None:
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        return InputError(f"layer {ly.entry.name!r} received no tensor input on calibration batch {index}")
    bad = ly.check_input(x)
    if bad:
        return InputError(
            f"calibration batch {index} ({describe_batch(batch)}) has the wrong shape for layer {ly.entry.name!r}: it {bad}"
        )
    return None


def _preflight(
    model: nn.Module, layers: list[Layer], batches: list[Any], forward: Callable[[nn.Module, Any], Any], device: torch.device
) -> None:
    """Every batch through the model once, each layer's input checked, before anything is pruned."""
    index = [0]
    handles = []
    for ly in layers:

        def pre(_m: nn.Module, args: tuple[Any, ...], ly: Layer = ly) -> None:
            err = _input_error(ly, args, index[0], batches[index[0]])
            if err is not None:
                raise err

        handles.append(ly.entry.module.register_forward_pre_hook(pre))
    try:
        for i, b in enumerate(batches):
            index[0] = i
            _run(model, forward, b, i, device)
    finally:
        for h in handles:
            h.remove()


def _execution_order(
    model: nn.Module, layers: list[Layer], batch: Any, forward: Callable[[nn.Module, Any], Any], device: torch.device
) -> dict[str, tuple[int, int, int]]:
    """fqn -> (first call index, number of calls, last call index) on one batch."""
    seen: dict[str, list[int]] = {}
    counter = [0]
    handles = []
    for ly in layers:

        def pre(_m: nn.Module, args: tuple[Any, ...], fqn: str = ly.entry.fqn) -> None:
            seen.setdefault(fqn, []).append(counter[0])
            counter[0] += 1

        handles.append(ly.entry.module.register_forward_pre_hook(pre))
    try:
        _run(model, forward, batch, 0, device)
    finally:
        for h in handles:
            h.remove()
    return {k: (v[0], len(v), v[-1]) for k, v in seen.items()}


def _calibrate(
    model: nn.Module,
    group: list[Layer],
    batches: list[Any],
    forward: Callable[[nn.Module, Any], Any],
    device: torch.device,
    opts: CalibrateOptions,
    order: dict[str, tuple[int, int, int]] | None,
) -> None:
    full = opts.method == "sparsegpt" or opts.layer_errors or opts.refits
    for ly in group:
        dev = ly.entry.param.device
        ly.stat = HessianAccumulator(ly.k, dev) if full else InputNormAccumulator(ly.k, dev)
        ly.calls = 0
    handles = []
    batch_index = [0]
    for ly in group:

        def pre(_m: nn.Module, args: tuple[Any, ...], ly: Layer = ly) -> None:
            err = _input_error(ly, args, batch_index[0], batches[batch_index[0]])
            if err is not None:
                raise err
            assert ly.stat is not None
            ly.stat.add(ly.rows(args[0].detach()))
            ly.calls += 1

        handles.append(ly.entry.module.register_forward_pre_hook(pre))
    seen = [0]
    if order is not None:
        # stop after the group's last layer (in call order) has run as often as it did when traced
        last = max(group, key=lambda ly: order[ly.entry.fqn][2])
        expected = order[last.entry.fqn][1]

        def post(_m: nn.Module, _a: tuple[Any, ...], _o: Any) -> None:
            seen[0] += 1
            if seen[0] >= expected:
                raise _StopForward

        handles.append(last.entry.module.register_forward_hook(post))
    try:
        for i, b in enumerate(batches):
            batch_index[0] = i
            seen[0] = 0
            try:
                _run(model, forward, b, i, device)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _prune_layer(ly: Layer, plan: Plan, opts: CalibrateOptions) -> None:
    e = ly.entry
    method = opts.method
    pattern: ElementPattern = ly.extra.pop("pattern")
    w = e.param
    wv = ly.view(w.detach())
    axis = ly.axis
    stat = ly.stat
    H = stat.H if isinstance(stat, HessianAccumulator) else None
    # Scores that the permutation search should keep: the method's own importance.
    if isinstance(stat, InputNormAccumulator):
        norm = stat.norm()
    elif H is not None:
        norm = torch.diagonal(H).clamp_min(0).sqrt()
    else:
        norm = torch.ones(ly.k, device=w.device)

    perm_k: torch.Tensor | None = None  # permutation of the original K axis
    cols: torch.Tensor | None = None  # the matching permutation of the view's K columns
    if opts.permutation:
        assert isinstance(pattern, SemiStructured)
        from graphprune.sparsity.permutation import search_permutation

        shape = [1] * wv.dim()
        shape[axis] = ly.k
        score_view = wv.abs().float() * norm.to(w.device).float().reshape(shape)
        score_w = ly.unview(score_view, w.shape)
        result = search_permutation(
            score_w, pattern.n, pattern.m, axis=e.k_axis, time_budget_s=opts.permutation_time_budget_s
        )
        perm_k = torch.as_tensor(result.perm, dtype=torch.long, device=w.device)
        if ly.kind == "conv":
            c = w.shape[1]
            positions = ly.k // c
            cols = (torch.arange(positions, device=w.device)[:, None] * c + perm_k[None, :]).reshape(-1)
        else:
            cols = perm_k
        ly.extra["kept_before"] = result.kept_before
        ly.extra["kept_after"] = result.kept_after

    def fwd(t: torch.Tensor) -> torch.Tensor:
        return t if cols is None else t.index_select(axis, cols)

    def back(t: torch.Tensor) -> torch.Tensor:
        return t if cols is None else t.index_select(axis, torch.argsort(cols))

    Hp = None if H is None else (H if cols is None else H.index_select(0, cols).index_select(1, cols))
    new_v: torch.Tensor | None = None
    if method == "sparsegpt":
        assert Hp is not None
        init = None
        if opts.search == "obs" or opts.admm_init == "obs":
            new_p, keep_p = sparsegpt_prune(
                fwd(wv), Hp, pattern, axis=axis, blocksize=opts.blocksize, percdamp=opts.percdamp, name=e.fqn
            )
            init = keep_p
        if opts.search == "admm":
            new_p, keep_p = admm_prune(
                fwd(wv),
                Hp,
                pattern,
                axis=axis,
                iterations=opts.admm_iterations,
                rho=opts.admm_rho,
                rho_growth=opts.admm_growth,
                percdamp=opts.percdamp,
                init_keep=init,
                name=e.fqn,
            )
        new_v, keep_v = back(new_p), back(keep_p)
    elif method == "wanda":
        keep_v = back(wanda_mask(fwd(wv), norm if cols is None else norm.index_select(0, cols), pattern, axis=axis))
    else:  # magnitude: |W| per row (unstructured) or per group of M, as Wanda with unit input norms
        keep_v = back(wanda_mask(fwd(wv), torch.ones(ly.k, device=w.device), pattern, axis=axis))
    if opts.refits and Hp is not None and not (method == "sparsegpt" and opts.search == "admm"):  # ADMM ends refitted
        start = fwd(new_v) if new_v is not None else None
        new_v = back(refit_kept(fwd(wv), Hp, fwd(keep_v), axis=axis, percdamp=opts.percdamp, init=start))
    extra: dict[str, Any] = {"method": method, "calibration_rows": stat.rows if stat is not None else 0}
    total = float(wv.abs().sum(dtype=torch.float64))
    extra["kept_magnitude"] = float((wv.abs() * keep_v).sum(dtype=torch.float64)) / total if total > 0 else 1.0
    if H is not None and opts.layer_errors:
        extra["output_error"] = gram_output_error(wv, (new_v if new_v is not None else wv) * keep_v, H, axis=axis)
    mask = ly.unview(keep_v, w.shape)
    values = ly.unview(new_v, w.shape) if new_v is not None else None
    if values is not None:
        w.copy_(values)
    w.mul_(mask)
    extra.update({k: v for k, v in ly.extra.items() if v is not None})
    if method != "magnitude" and stat is not None and stat.rows == 0:
        extra["note"] = "no calibration rows"
    elif method != "magnitude" and stat is not None and stat.rows < ly.k:
        extra["note"] = (
            f"{stat.rows} calibration rows < K={ly.k}: the statistics are rank-deficient and the update may fit them "
            "rather than the data; calibrate with more samples"
        )
    plan.add(
        PlanSite(
            param=e.fqn,
            mask=mask,
            k_axis=e.k_axis,
            pattern=f"{method}:{pattern}",
            perm=perm_k,
            values=w.detach() if values is not None else None,
            extra={k: (float(v) if isinstance(v, float) and math.isfinite(v) else v) for k, v in extra.items()},
        )
    )
