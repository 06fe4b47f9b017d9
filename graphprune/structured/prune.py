"""Structured pruning that physically shrinks a model, as one call: plan -> score -> choose -> rewrite -> verify.

1. *analyse* (read-only): capture with ``torch.export.export(strict=False)`` and find the coupled groups
   (:mod:`graphprune.analysis.groups`);
2. *plan* (:mod:`.plan`): match groups to patterns; groups that cannot be sliced or that the globs leave
   out stay dense with a Decision naming the node;
3. *score* (:mod:`.score`) and *choose* (:mod:`.choose`) the units each candidate keeps;
4. *rewrite* (:mod:`.rewrite`): slice tensors, resize modules, update head counts and the HF config,
   rescale RMSNorms; the architecture delta records it all;
5. *verify* (:mod:`.verify`): the shrunk model's outputs equal those of the *masked equivalent* (the
   dense model with the removed channels' weights zeroed) on the example inputs; a mismatch raises
   ValidationError naming the reshape nodes that read a pruned width.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from graphprune._module_tensors import get_tensor, inference
from graphprune.analysis.groups import GroupAnalysis, find_groups
from graphprune.config import StructuredPattern
from graphprune.selector import Selector
from graphprune.structured.choose import choose_units
from graphprune.structured.plan import build_keep, keep_json, patterns_by_type, plan_groups
from graphprune.structured.records import StructuredResult
from graphprune.structured.rewrite import shrink
from graphprune.structured.score import score_groups
from graphprune.structured.verify import make_masked_equivalent, verify_shrunk

log = logging.getLogger(__name__)

__all__ = ["prune_structured"]


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_structured(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    patterns: Sequence[StructuredPattern] | StructuredPattern,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    calibration: Iterable[tuple[Any, ...]] | None = None,
    progress: bool = False,
    verify: bool = True,
    base_units: dict[str, int] | None = None,
    analysis: GroupAnalysis | None = None,
) -> StructuredResult:
    """Physically remove channels / heads / FFN neurons / hidden size of ``model`` IN PLACE and return what was done.

    ``patterns``: ``Channels``, ``Heads``, ``FFN`` and/or ``Hidden`` (at most one of each); ``ratio`` is the
    fraction of each group's units to remove, in [0, 1). ``include`` / ``exclude``: fnmatch globs
    over module fqns (a group counts when one of its producing modules matches). ``calibration``:
    batches (tuples of positional inputs) for ``taylor`` and ``activation`` importance; the example
    inputs are used when it is None. ``verify``: compare the shrunk model with the masked-equivalent
    dense model on ``example_inputs`` (ValidationError on a mismatch). ``base_units``: group key ->
    unit count the ratios refer to (iterative schedules: ratios of the original size).

    Raises ConfigError (bad pattern), WeightError (a layer would keep zero channels or heads),
    UnsupportedModelError (no graph), ValidationError (the shrunk model does not compute what the
    masked model computes).
    """
    pats = patterns_by_type(patterns)
    example_inputs = tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
    params_before = _count_params(model)
    analysis = analysis if analysis is not None else find_groups(model, example_inputs)
    plan = plan_groups(model, analysis, pats, Selector(tuple(include), tuple(exclude)))
    scores = score_groups(model, plan.candidates, example_inputs, calibration, progress=progress)
    chosen = choose_units(model, plan, scores, base_units=base_units)

    keep = build_keep(model, chosen)
    kept = keep_json(keep)
    original_shapes = {t: list(get_tensor(model, t).shape) for t in kept}
    result = StructuredResult(
        model, list(plan.records.values()), plan.decisions, {}, kept, original_shapes, params_before, params_before
    )
    result.notes.extend(plan.notes)

    reference = None
    if verify and chosen:
        masked = make_masked_equivalent(model, kept)
        with inference(masked):
            reference = masked(*example_inputs)
        del masked

    result.delta = shrink(model, keep, chosen, analysis, plan.records, result.notes)
    result.params_after = _count_params(model)
    if reference is not None:
        result.parity = verify_shrunk(model, example_inputs, reference, chosen)
    log.info("structured pruning: %s", result.summary())
    return result
