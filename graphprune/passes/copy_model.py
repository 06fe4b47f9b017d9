"""Stage ``copy``: the one copy of the caller's model that every later stage works on.

``compile`` never mutates the caller's model: this stage deep-copies it once (in eval mode) and
keeps the caller's object as ``ctx.original``, read later only as the dense reference (fidelity).
Every other stage mutates the copy in place where it must, so a run holds at most one extra copy of
the weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn

from graphprune.errors import InputError
from graphprune.passes.base import PassContext, PassResult, register_pass

__all__ = ["CopyReport", "copy_model", "copy_stage"]


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (InputError naming the model when it cannot be copied)."""
    try:
        return copy.deepcopy(model)
    except Exception as e:
        raise InputError(f"cannot copy {type(model).__name__} (graphprune never mutates the caller's model): {e}") from e


@dataclass(frozen=True)
class CopyReport:
    params: int

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params}


@register_pass("copy", mutates=("module",))
def copy_stage(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Deep-copy the caller's model once, in eval mode; the caller's object is kept only as the dense reference."""
    work = copy_model(module)
    work.eval()
    ctx.original = module
    return PassResult(work, modified=True, report=CopyReport(sum(p.numel() for p in work.parameters())))
