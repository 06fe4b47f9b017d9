"""One-shot pruning with calibration data: the driver around ``graphprune.sparsity.oneshot``.

``prune_oneshot(model, calibration, method="wanda" | "sparsegpt" | "magnitude", pattern=...)`` prunes
the model in place and returns a :class:`~graphprune.plan.Plan` (masks, permutations and, for
SparseGPT, the updated weight values).

Layer by layer, bounded memory: sites are grouped (by default by transformer block — the fqn up to
its first numeric component, ``encoder.layer.3``), groups are processed in execution order, and for
each group the calibration batches are run through the model with forward pre-hooks on that group's
layers only. The hooks accumulate per-layer statistics — ``Σx²`` per input feature (Wanda) or
``XᵀX`` (SparseGPT, ``K×K``) — never the activations themselves. The group is then pruned in place,
so later groups see the outputs of already pruned layers (SparseGPT's sequential scheme). With
``early_exit`` the forward pass stops once the group's last layer has run.

Conv layers (``Conv1d``/``Conv2d``, groups=1, zero padding) are treated as linear maps on unfolded
patches, with the weight viewed as ``[O, kh·kw·C]`` (channels innermost). Sites that calibration
cannot handle (grouped/3-D/transposed convs, layers never reached by the calibration batches, K not
divisible by M) are left dense and listed in ``plan.skipped`` with a reason.

Calibration data: any re-iterable of batches (a list, a DataLoader); a one-shot iterator is read
into a list once. A batch is a tensor (``model(x)``), a tuple/list (``model(*batch)``) or a mapping
(``model(**batch)``), or anything ``forward(model, batch)`` accepts. Every batch must have the
structure of the first (same inputs, same number of dims, same dtypes); a mismatch, a layer fed
with the wrong feature size, or a forward that fails raises InputError naming the batch and input.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from graphprune.analysis.module_sites import DEFAULT_WHITELIST, SiteEntry, find_prunable_sites, unwrap
from graphprune.config import SemiStructured, Unstructured
from graphprune.errors import ConfigError, GraphPruneError, InputError
from graphprune.plan import Plan, PlanSite
from graphprune.sparsity.oneshot import HessianAccumulator, InputNormAccumulator, sparsegpt_prune, wanda_mask
from graphprune.training.calibration import Layer, default_forward, describe_batch, layer_for, materialize, to_device

__all__ = ["block_of", "describe_batch", "prune_oneshot"]

log = logging.getLogger(__name__)

Method = Literal["wanda", "sparsegpt", "magnitude"]
_BLOCK = re.compile(r"^(.*?\.\d+)(?:\.|$)")


def block_of(fqn: str) -> str:
    """Default grouping: the fqn up to its first numeric component (``encoder.layer.3``), else itself."""
    m = _BLOCK.match(fqn)
    return m.group(1) if m else fqn


class _StopForward(Exception):
    pass


_GROUPINGS: dict[str, Callable[[str], str]] = {
    "block": block_of,  # one transformer block (or top-level module) at a time
    "parent": lambda fqn: fqn.rpartition(".")[0],  # layers sharing a parent: q/k/v together, then o, up, down
    "layer": lambda fqn: fqn,  # every layer on the outputs of all layers pruned before it
}


# --------------------------------------------------------------------------- the driver


def prune_oneshot(
    model: nn.Module,
    calibration: Iterable[Any] | None,
    *,
    method: Method = "sparsegpt",
    pattern: SemiStructured | Unstructured = SemiStructured(),  # noqa: B008 (frozen dataclass)
    sites: Sequence[SiteEntry] | None = None,
    whitelist: Sequence[Any] = DEFAULT_WHITELIST,
    allowed_layer_names: Sequence[str] | None = None,
    disallowed_layer_names: Sequence[str] = (),
    sequential: bool = True,
    group_by: Literal["block", "parent", "layer"] | Callable[[str], str] = "block",
    early_exit: bool = True,
    blocksize: int = 128,
    percdamp: float = 0.01,
    permutation: bool = False,
    permutation_time_budget_s: float = 1.0,
    forward: Callable[[nn.Module, Any], Any] = default_forward,
    max_batches: int | None = None,
) -> Plan:
    """Prune ``model`` in place with calibration data; return the plan. See the module docstring.

    Args:
        method: ``"wanda"`` (|W|·||x_j||₂ scores, weights unchanged), ``"sparsegpt"`` (OBS updates of the
            kept weights; the plan carries the new values) or ``"magnitude"`` (no calibration needed).
        pattern: ``SemiStructured(n, m)`` (1-D) or ``Unstructured(sparsity)`` (per output row for Wanda,
            per column block for SparseGPT).
        sites: explicit sites (else :func:`~graphprune.training.asp.find_prunable_sites` with the filters).
        sequential: prune group by group, each calibrated on the outputs of the pruned groups before it;
            False collects all statistics in one pass on the dense model.
        group_by: the groups: ``"block"`` (default: fqn up to its first numeric component, e.g. one
            transformer layer), ``"parent"`` (layers with the same parent module: for BERT q/k/v, then
            the attention output, then the FFN's up and down projections in turn — SparseGPT's "true
            sequential"), ``"layer"`` (each layer alone), or ``fn(module_fqn) -> group key``.
        permutation: for N:M, search a permutation of each weight's K axis (on the method's scores) and
            prune in permuted space; the plan records the permutation (masks are in the model's layout).
    """
    if isinstance(group_by, str):
        if group_by not in _GROUPINGS:
            raise ConfigError(
                f"prune_oneshot group_by must be one of {sorted(_GROUPINGS)} or a callable, got {group_by!r}"
            )
        group_by = _GROUPINGS[group_by]
    if method not in ("wanda", "sparsegpt", "magnitude"):
        raise ConfigError(f"prune_oneshot method must be 'wanda', 'sparsegpt' or 'magnitude', got {method!r}")
    if not isinstance(pattern, (SemiStructured, Unstructured)):
        raise ConfigError(f"prune_oneshot pattern must be SemiStructured(...) or Unstructured(...), got {pattern!r}")
    if isinstance(pattern, SemiStructured) and pattern.method != "1d":
        raise ConfigError(f"prune_oneshot supports 1-D N:M, got SemiStructured.method={pattern.method!r}")
    if permutation and not isinstance(pattern, SemiStructured):
        raise ConfigError("permutation=True needs an N:M pattern (SemiStructured)")
    model = unwrap(model)
    if sites is None:
        sites = find_prunable_sites(
            model,
            whitelist=whitelist,
            allowed_layer_names=allowed_layer_names,
            disallowed_layer_names=disallowed_layer_names,
        )
    plan = Plan(meta={"source": "graphprune.training.oneshot", "method": method, "pattern": str(pattern)})
    layers: list[Layer] = []
    for e in sites:
        m = getattr(pattern, "m", None)
        k = e.param.shape[e.k_axis]
        if m is not None and k % m:
            plan.skip(e.fqn, "k_not_divisible", f"K={k} (axis {e.k_axis}) is not divisible by M={m}")
            continue
        layer, why = layer_for(e)
        if layer is None:
            plan.skip(e.fqn, "unsupported_op", why)
            continue
        layers.append(layer)

    if method == "magnitude":
        for layer in layers:
            _prune_layer(layer, plan, method, pattern, blocksize, percdamp, permutation, permutation_time_budget_s)
        return plan

    batches = materialize(calibration, max_batches)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        order = _execution_order(model, layers, batches[0], forward, device) if sequential else {}
        unreached = [ly for ly in layers if sequential and ly.entry.fqn not in order]
        for ly in unreached:
            plan.skip(ly.entry.fqn, "not_reached", "the layer did not run on the first calibration batch")
        reached = [ly for ly in layers if ly not in unreached]
        if sequential:
            groups: dict[str, list[Layer]] = {}
            for ly in sorted(reached, key=lambda ly: order[ly.entry.fqn][0]):
                groups.setdefault(group_by(ly.entry.name), []).append(ly)
            group_list = list(groups.values())
        else:
            group_list = [reached]
        for gi, group in enumerate(group_list):
            if not group:
                continue
            log.info(
                "one-shot %s: group %d/%d (%s, %d layers)",
                method,
                gi + 1,
                len(group_list),
                group_by(group[0].entry.name),
                len(group),
            )
            _calibrate(model, group, batches, forward, device, method, order if (sequential and early_exit) else None)
            for ly in group:
                if ly.calls == 0:
                    plan.skip(ly.entry.fqn, "not_reached", "the layer did not run on the calibration batches")
                    continue
                _prune_layer(ly, plan, method, pattern, blocksize, percdamp, permutation, permutation_time_budget_s)
                ly.stat = None  # free the K×K / K statistics before the next group
    finally:
        model.train(was_training)
    return plan


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
    method: str,
    order: dict[str, tuple[int, int, int]] | None,
) -> None:
    for ly in group:
        dev = ly.entry.param.device
        ly.stat = HessianAccumulator(ly.k, dev) if method == "sparsegpt" else InputNormAccumulator(ly.k, dev)
        ly.calls = 0
    handles = []
    batch_index = [0]
    for ly in group:

        def pre(_m: nn.Module, args: tuple[Any, ...], ly: Layer = ly) -> None:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                raise InputError(
                    f"layer {ly.entry.name!r} received no tensor input on calibration batch {batch_index[0]}"
                )
            bad = ly.check_input(x)
            if bad:
                raise InputError(
                    f"calibration batch {batch_index[0]} ({describe_batch(batches[batch_index[0]])}) has the wrong shape "
                    f"for layer {ly.entry.name!r}: it {bad}"
                )
            rows = ly.rows(x.detach())
            assert ly.stat is not None
            ly.stat.add(rows)
            ly.calls += 1

        handles.append(ly.entry.module.register_forward_pre_hook(pre))
    if order is not None:
        # stop after the group's last layer (in call order) has run as often as it did when traced
        last = max(group, key=lambda ly: order[ly.entry.fqn][2])
        expected = order[last.entry.fqn][1]
        seen = [0]

        def post(_m: nn.Module, _a: tuple[Any, ...], _o: Any) -> None:
            seen[0] += 1
            if seen[0] >= expected:
                raise _StopForward

        handles.append(last.entry.module.register_forward_hook(post))
    try:
        for i, b in enumerate(batches):
            batch_index[0] = i
            if order is not None:
                seen[0] = 0
            try:
                _run(model, forward, b, i, device)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _prune_layer(
    ly: Layer,
    plan: Plan,
    method: str,
    pattern: SemiStructured | Unstructured,
    blocksize: int,
    percdamp: float,
    permutation: bool,
    time_budget_s: float,
) -> None:
    e = ly.entry
    w = e.param
    wv = ly.view(w.detach())
    axis = ly.axis
    stat = ly.stat
    # Scores that the permutation search should keep: the method's own importance.
    if method == "wanda":
        assert isinstance(stat, InputNormAccumulator)
        norm = stat.norm()
    elif method == "sparsegpt":
        assert isinstance(stat, HessianAccumulator)
        norm = torch.diagonal(stat.H).clamp_min(0).sqrt()
    else:
        norm = torch.ones(ly.k, device=w.device)

    perm_k: torch.Tensor | None = None  # permutation of the original K axis
    cols: torch.Tensor | None = None  # the matching permutation of the view's K columns
    if permutation:
        assert isinstance(pattern, SemiStructured)
        from graphprune.sparsity.permutation import search_permutation

        shape = [1] * wv.dim()
        shape[axis] = ly.k
        score_view = wv.abs().float() * norm.to(w.device).float().reshape(shape)
        score_w = ly.unview(score_view, w.shape)
        result = search_permutation(score_w, pattern.n, pattern.m, axis=e.k_axis, time_budget_s=time_budget_s)
        perm_k = torch.as_tensor(result.perm, dtype=torch.long, device=w.device)
        if ly.kind == "conv":
            c = w.shape[1]
            positions = ly.k // c
            cols = (torch.arange(positions, device=w.device)[:, None] * c + perm_k[None, :]).reshape(-1)
        else:
            cols = perm_k
        ly.extra["kept_before"] = getattr(result, "kept_before", None)
        ly.extra["kept_after"] = getattr(result, "kept_after", None)

    def fwd(t: torch.Tensor) -> torch.Tensor:
        return t if cols is None else t.index_select(axis, cols)

    def back(t: torch.Tensor) -> torch.Tensor:
        return t if cols is None else t.index_select(axis, torch.argsort(cols))

    values = None
    if method == "sparsegpt":
        assert isinstance(stat, HessianAccumulator)
        H = stat.H if cols is None else stat.H.index_select(0, cols).index_select(1, cols)
        new_v, keep_v = sparsegpt_prune(
            fwd(wv), H, pattern, axis=axis, blocksize=blocksize, percdamp=percdamp, name=e.fqn
        )
        new_v, keep_v = back(new_v), back(keep_v)
        values = ly.unview(new_v, w.shape)
    else:
        keep_v = back(wanda_mask(fwd(wv), norm if cols is None else norm.index_select(0, cols), pattern, axis=axis))
    mask = ly.unview(keep_v, w.shape)
    if values is not None:
        w.copy_(values)
    w.mul_(mask)
    extra: dict[str, Any] = {"calibration_rows": stat.rows if stat is not None else 0}
    extra.update({k: v for k, v in ly.extra.items() if v is not None})
    if method != "magnitude" and stat is not None and stat.rows == 0:
        extra["note"] = "no calibration rows"
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
