"""Iterative structured schedules: prune in steps (e.g. 20% → 40% → 60% of the original size).

Each step re-analyses the (already shrunk) model and calls :func:`graphprune.structured.prune.prune_structured`
with ``base_units`` set to the ORIGINAL unit counts, so every ratio is a fraction of the original
size. Between steps a user callback may retrain; a deep copy of the model after each step is kept as
a snapshot (CAP uses these as contrastive targets).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from graphprune.analysis.groups import find_groups
from graphprune.config import StructuredPattern
from graphprune.errors import ConfigError
from graphprune.structured.plan import group_key
from graphprune.structured.prune import prune_structured
from graphprune.structured.records import StructuredResult


@dataclass
class IterativeResult:
    model: nn.Module
    steps: list[StructuredResult]
    snapshots: list[nn.Module]
    ratios: list[float]


def prune_structured_iteratively(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    ratios: Sequence[float],
    make_patterns: Callable[[float], Sequence[StructuredPattern]],
    *,
    between_steps: Callable[[int, nn.Module], None] | None = None,
    keep_snapshots: bool = True,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    calibration: Iterable[tuple[Any, ...]] | None = None,
    verify: bool = True,
) -> IterativeResult:
    """Prune in steps (e.g. 0.2 → 0.4 → 0.6), each ratio of the ORIGINAL size, mutating ``model``.

    ``make_patterns(ratio)`` gives the patterns of one step. After step ``i``, ``between_steps(i,
    model)`` runs (retraining); then a deep copy of the model is kept as snapshot ``i`` (CAP uses
    these as contrastive targets). Ratios must increase.
    """
    rs = [float(r) for r in ratios]
    for r in rs:
        if not 0 <= r < 1:
            raise ConfigError(f"iterative ratios must be in [0, 1), got {r!r}")
    if any(b <= a for a, b in itertools.pairwise(rs)):
        raise ConfigError(f"iterative ratios must increase (each is a fraction of the original size), got {rs}")
    base: dict[str, int] | None = None
    steps: list[StructuredResult] = []
    snaps: list[nn.Module] = []
    calib = list(calibration) if calibration is not None else None
    for i, r in enumerate(rs):
        analysis = find_groups(model, example_inputs)
        if base is None:
            base = {group_key(g): g.units for g in analysis.groups}
        res = prune_structured(
            model, example_inputs, make_patterns(r), include=include, exclude=exclude, calibration=calib,
            verify=verify, base_units=base, analysis=analysis,
        )
        steps.append(res)
        if between_steps is not None:
            between_steps(i, model)
        if keep_snapshots:
            snaps.append(copy.deepcopy(model))
    return IterativeResult(model, steps, snaps, rs)


__all__ = ["IterativeResult", "prune_structured_iteratively"]
