"""Structured pruning that physically shrinks a model: channels, attention heads (GQA too), FFN neurons,
the hidden size of RMSNorm residual streams.

The steps, one module each: :mod:`.plan` (which pattern each coupled group gets) -> :mod:`.score`
(unit importance) -> :mod:`.choose` (how many units, which) -> :mod:`.rewrite` (slice tensors, resize
modules: :mod:`.remove_channels`, :mod:`.remove_heads`, :mod:`.rescale_norms`; write the architecture
delta) -> :mod:`.verify` (the shrunk model equals the masked-equivalent dense model). :func:`prune_structured`
runs them in order; :mod:`.iterative` repeats it in steps; :mod:`.records` holds what a run records.
"""

from graphprune.structured.iterative import IterativeResult, prune_structured_iteratively
from graphprune.structured.plan import group_key
from graphprune.structured.prune import prune_structured
from graphprune.structured.records import GroupRecord, StructuredResult
from graphprune.structured.score import accumulate_activations, accumulate_taylor, group_importance
from graphprune.structured.verify import make_masked_equivalent

__all__ = [
    "GroupRecord",
    "IterativeResult",
    "StructuredResult",
    "accumulate_activations",
    "accumulate_taylor",
    "group_importance",
    "group_key",
    "make_masked_equivalent",
    "prune_structured",
    "prune_structured_iteratively",
]
