"""Pass ``permute-channels`` (:mod:`.permute`): permute coupled channels so N:M masks keep more weight
magnitude, the dense function unchanged; :mod:`.search` finds one group's permutation, :mod:`.records`
holds the options and what the pass records."""

from graphprune.passes.permute_channels.permute import permute_channels, permute_for_patterns, permute_model_channels
from graphprune.passes.permute_channels.records import (
    GroupPermutation,
    LayerEfficacy,
    PermutationReport,
    PermuteChannelsConfig,
)

__all__ = [
    "GroupPermutation",
    "LayerEfficacy",
    "PermutationReport",
    "PermuteChannelsConfig",
    "permute_channels",
    "permute_for_patterns",
    "permute_model_channels",
]
