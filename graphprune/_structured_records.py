"""Records, decisions and checks for :func:`graphprune.structured.prune_structured`.

Holds the masked equivalent (the dense model with the removed channels' weights zeroed, what the
shrunk model must compute), the parity check of the shrunk model against it (``_verify``, which
raises ValidationError naming the suspect reshape nodes), and the helpers that fill a group's
``GroupRecord`` and the ``Decision`` of a group left dense. None of them changes the model it is
given, except ``_eval``, which switches it to eval mode for the duration and restores each module's mode.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from graphprune._modules import eval_mode
from graphprune.analysis.groups import ChannelGroup
from graphprune.errors import ValidationError
from graphprune.passes.fx.remove_channels import get_tensor
from graphprune.report import Decision

if TYPE_CHECKING:
    from graphprune.structured import GroupRecord, StructuredResult


def make_masked_equivalent(original: nn.Module, result: StructuredResult) -> nn.Module:
    """A deep copy of the dense ``original`` with the removed channels' contribution zeroed.

    Every parameter slice a removed unit owns is zeroed: producer rows and biases, BatchNorm scale
    and shift, consumer columns. Buffers are left alone (their channels then only reach zeroed
    weights). Where removal is exact, ``shrunk(x) == masked(x)``.
    """
    masked = copy.deepcopy(original)
    with torch.no_grad():
        for fqn, axes in result.keep.items():
            t = get_tensor(masked, fqn)
            if not isinstance(t, nn.Parameter):
                continue
            for axis, kept in axes.items():
                drop = torch.ones(t.shape[axis], dtype=torch.bool)
                drop[torch.tensor(kept, dtype=torch.long)] = False
                idx = drop.nonzero().flatten()
                if idx.numel():
                    t.index_fill_(axis, idx.to(t.device), 0)
    return masked



@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the block (the modes are restored after)."""
    with eval_mode(model), torch.no_grad():
        yield



def _verify(model: nn.Module, example_inputs: tuple[Any, ...], reference: Any, chosen: list[tuple[ChannelGroup, torch.Tensor]]) -> dict[str, Any]:
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
        with _eval(model):
            got = model(*example_inputs)
    except Exception as e:
        raise ValidationError(f"the shrunk model no longer runs: {type(e).__name__}: {str(e)[:500]}{hint}") from e
    stats = compare_outputs(reference, got)
    if not stats.ok:
        raise ValidationError(
            f"the shrunk model differs from the masked-equivalent dense model (max_abs={stats.max_abs:.3g}){hint}"
        )
    return {"ok": True, "max_abs": float(stats.max_abs)}



def _heads_dict(g: ChannelGroup) -> dict[str, int] | None:
    if g.heads is None:
        return None
    return {"num_heads": g.heads.num_heads, "num_kv_heads": g.heads.num_kv_heads, "head_dim": g.heads.head_dim}



def _importance_summary(s: torch.Tensor, kept: torch.Tensor) -> dict[str, float]:
    s = s.float()
    total = float(s.sum()) or 1.0
    return {
        "min": float(s.min()),
        "mean": float(s.mean()),
        "max": float(s.max()),
        "kept_share": float(s[kept].sum()) / total if kept.numel() else 0.0,
    }



def _blocked_message(model: nn.Module, g: ChannelGroup) -> str:
    parts = [f"{b.reason} (node {b.node}{', ' + b.source if b.source else ''})" for b in g.blockers[:3]]
    more = f" and {len(g.blockers) - 3} more" if len(g.blockers) > 3 else ""
    return f"group {g.name} left dense: " + "; ".join(parts) + more



def _decision(model: nn.Module, g: ChannelGroup, rec: GroupRecord) -> Decision:
    first = g.producer_members[0] if g.producer_members else g.members[0]
    try:
        shape = tuple(get_tensor(model, first.target).shape)
    except KeyError:
        shape = ()
    return Decision(
        param=first.target,
        module=first.target.rpartition(".")[0],
        op=f"structured_{g.kind}",
        shape=shape,
        k_axis=first.axis,
        pruned=False,
        pattern=rec.pattern,
        reason=rec.reason,
        message=rec.message,
        source=rec.source,
    )
