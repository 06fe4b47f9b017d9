"""One-shot pruning with calibration data for the training side: ``prune_oneshot``.

``prune_oneshot(model, calibration, method="wanda" | "sparsegpt" | "magnitude", pattern=...)`` prunes
the model in place and returns a :class:`~graphprune.plan.Plan` (masks, permutations and, for
SparseGPT, the updated weight values). It finds the sites by walking modules (ASP style) and runs the
one layer-by-layer driver, :func:`graphprune.passes.calibrate.driver.prune_layers` — the same code
``graphprune.compile(..., calibration=...)`` runs, so both give the same masks and weights on the same
data. Layers the driver cannot calibrate (grouped/3-D/transposed convs, layers never reached, K not
divisible by M) are left dense and listed in ``plan.skipped`` with a reason.

Calibration data: any re-iterable of batches (a list, a DataLoader); a one-shot iterator is read
into a list once. A batch is a tensor (``model(x)``), a tuple/list (``model(*batch)``) or a mapping
(``model(**batch)``), or anything ``forward(model, batch)`` accepts. Every batch must have the
structure of the first (same inputs, same number of dims, same dtypes); a mismatch, a layer fed
with the wrong feature size, or a forward that fails raises InputError naming the batch and input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from torch import nn

from graphprune.analysis.module_sites import DEFAULT_WHITELIST, SiteEntry, find_prunable_sites, unwrap
from graphprune.config import SemiStructured, Unstructured
from graphprune.errors import ConfigError
from graphprune.passes.calibrate.batches import default_forward, describe_batch
from graphprune.passes.calibrate.driver import GROUPINGS, METHODS, CalibrateOptions, Method, block_of, prune_layers
from graphprune.plan import Plan

__all__ = ["block_of", "describe_batch", "prune_oneshot"]


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
    refit: bool | None = None,
    search: Literal["obs", "admm"] = "admm",
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
        sites: explicit sites (else :func:`~graphprune.analysis.module_sites.find_prunable_sites` with the filters).
        sequential: prune group by group, each calibrated on the outputs of the pruned groups before it;
            False collects all statistics in one pass on the dense model.
        group_by: the groups: ``"block"`` (default: fqn up to its first numeric component, e.g. one
            transformer layer), ``"parent"`` (layers with the same parent module: for BERT q/k/v, then
            the attention output, then the FFN's up and down projections in turn — SparseGPT's "true
            sequential"), ``"layer"`` (each layer alone), or ``fn(module_fqn) -> group key``.
        refit, search, blocksize, percdamp: see :class:`~graphprune.passes.calibrate.driver.CalibrateOptions`.
        permutation: for N:M, search a permutation of each weight's K axis (on the method's scores) and
            prune in permuted space; the plan records the permutation (masks are in the model's layout).
    """
    key: Callable[[str], str] | None = None
    if callable(group_by):
        key, group_by = group_by, "block"
    elif group_by not in GROUPINGS:
        raise ConfigError(f"prune_oneshot group_by must be one of {sorted(GROUPINGS)} or a callable, got {group_by!r}")
    if method not in METHODS:
        raise ConfigError(f"prune_oneshot method must be 'wanda', 'sparsegpt' or 'magnitude', got {method!r}")
    if not isinstance(pattern, (SemiStructured, Unstructured)):
        raise ConfigError(f"prune_oneshot pattern must be SemiStructured(...) or Unstructured(...), got {pattern!r}")
    if isinstance(pattern, SemiStructured) and pattern.method != "1d":
        raise ConfigError(f"prune_oneshot supports 1-D N:M, got SemiStructured.method={pattern.method!r}")
    if permutation and not isinstance(pattern, SemiStructured):
        raise ConfigError("permutation=True needs an N:M pattern (SemiStructured)")
    options = CalibrateOptions(
        method=method,
        sequential=sequential,
        group_by=group_by,
        early_exit=early_exit,
        blocksize=blocksize,
        percdamp=percdamp,
        refit=refit,
        search=search,
        max_batches=max_batches,
        permutation=permutation,
        permutation_time_budget_s=permutation_time_budget_s,
    )
    model = unwrap(model)
    if sites is None:
        sites = find_prunable_sites(
            model,
            whitelist=whitelist,
            allowed_layer_names=allowed_layer_names,
            disallowed_layer_names=disallowed_layer_names,
        )
    plan = prune_layers(model, sites, calibration, patterns=pattern, options=options, forward=forward, group_key=key)
    plan.meta.update({"source": "graphprune.training.oneshot", "method": method, "pattern": str(pattern)})
    return plan
