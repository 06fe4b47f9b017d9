"""The check every structured rewrite must pass: the shrunk model computes what the *masked equivalent*
computes (the dense model with the removed channels' weights zeroed).

:func:`make_masked_equivalent` builds that reference from the dense model and the kept indices;
:func:`verify_shrunk` runs the shrunk model and compares (one tolerance policy,
:func:`graphprune.runtime.compare.compare_outputs`), raising ValidationError that names the reshape
nodes that read a pruned width, the usual cause of a mismatch (a head count the forward hard-codes,
folded into a constant at capture).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from graphprune._module_tensors import get_tensor, inference
from graphprune.analysis.groups import ChannelGroup
from graphprune.errors import ValidationError

__all__ = ["make_masked_equivalent", "verify_shrunk"]


def make_masked_equivalent(original: nn.Module, keep: Mapping[str, Mapping[int, Sequence[int]]]) -> nn.Module:
    """A deep copy of the dense ``original`` with the removed channels' contribution zeroed.

    ``keep``: tensor fqn -> axis -> kept indices. Every parameter slice a removed unit owns is zeroed:
    producer rows and biases, BatchNorm scale and shift, consumer columns. Buffers are left alone (their
    channels then only reach zeroed weights). Where removal is exact, ``shrunk(x) == masked(x)``.
    """
    masked = copy.deepcopy(original)
    with torch.no_grad():
        for fqn, axes in keep.items():
            t = get_tensor(masked, fqn)
            if not isinstance(t, nn.Parameter):
                continue
            for axis, kept in axes.items():
                drop = torch.ones(t.shape[axis], dtype=torch.bool)
                drop[torch.tensor(list(kept), dtype=torch.long)] = False
                idx = drop.nonzero().flatten()
                if idx.numel():
                    t.index_fill_(axis, idx.to(t.device), 0)
    return masked


def verify_shrunk(
    model: nn.Module, example_inputs: tuple[Any, ...], reference: Any, chosen: Sequence[tuple[ChannelGroup, torch.Tensor]]
) -> dict[str, Any]:
    """Compare the shrunk ``model`` on ``example_inputs`` with the masked equivalent's ``reference`` outputs."""
    from graphprune.runtime.compare import compare_outputs

    suspects = [n for g, _ in chosen for n in g.reshape_nodes]
    hint = (
        f"; reshape nodes that read the pruned widths: {', '.join(suspects[:8])} — a forward that hard-codes a head "
        "count or width (folded into a constant at capture) cannot be shrunk"
        if suspects
        else ""
    )
    streams = [g.name for g, _ in chosen if g.kind == "hidden"]
    if streams:
        hint += (
            f"; hidden size pruned in {', '.join(streams[:3])}: that is exact only where each RMSNorm computes "
            "weight * x / rms(x) and nothing reads the width itself (Gemma's (1 + weight) norms and its embedding "
            "scale sqrt(hidden_size) do not qualify) — leave the stream dense (drop hidden:R, or exclude it)"
        )
    try:
        with inference(model):
            got = model(*example_inputs)
    except Exception as e:
        raise ValidationError(f"the shrunk model no longer runs: {type(e).__name__}: {str(e)[:500]}{hint}") from e
    stats = compare_outputs(reference, got)
    if not stats.ok:
        raise ValidationError(
            f"the shrunk model differs from the masked-equivalent dense model (max_abs={stats.max_abs:.3g}){hint}"
        )
    return {"ok": True, "max_abs": float(stats.max_abs)}
