"""Pass infrastructure.

A pass is ``fn(module, config, ctx) -> PassResult(module, modified, report)``. The pipeline copies
the user's model once at entry; passes then mutate the working module freely and must say so
(``modified``). :func:`run_pass` times each pass, records it in the report, and turns a failure
into a :class:`~graphprune.errors.PassError` naming the pass and the passes that ran before it
(the cause is chained). With ``ctx.dump_dir`` set, the module's printout (its graph where it has
one) is written before and after each pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphprune.analysis.sites import Site
from graphprune.capture import Capture
from graphprune.config import CompileConfig, ElementPattern
from graphprune.errors import GraphPruneError, PassError
from graphprune.report import CompileReport, Decision, PassRecord


@dataclass
class PassResult:
    module: nn.Module
    modified: bool
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """State shared by the passes of one compile run."""

    example_inputs: tuple[Any, ...]
    capture: Capture | None = None
    sites: dict[str, Site] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)
    patterns: dict[str, ElementPattern] = field(default_factory=dict)  # param fqn -> pattern, pruned sites only
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # param fqn -> bool mask (True = keep)
    report: CompileReport = field(default_factory=CompileReport)
    progress: bool = False
    dump_dir: Path | None = None
    ran: list[str] = field(default_factory=list)


Pass = Callable[[nn.Module, CompileConfig, PassContext], PassResult]


def _dump(ctx: PassContext, module: nn.Module, name: str, when: str) -> None:
    if ctx.dump_dir is None:
        return
    ctx.dump_dir.mkdir(parents=True, exist_ok=True)
    idx = len(ctx.ran)
    text = module.code if isinstance(module, torch.fx.GraphModule) else repr(module)
    (ctx.dump_dir / f"{idx:02d}-{name}-{when}.txt").write_text(text)


def run_pass(name: str, fn: Pass, module: nn.Module, config: CompileConfig, ctx: PassContext) -> nn.Module:
    _dump(ctx, module, name, "before")
    t0 = time.perf_counter()
    try:
        result = fn(module, config, ctx)
    except GraphPruneError as e:
        if isinstance(e, PassError):
            raise
        # user-facing errors (a NaN weight, a bad option) keep their type; add where they came from
        e.args = (f"{e.args[0] if e.args else e} [pass {name}; after: {', '.join(ctx.ran) or 'none'}]",)
        raise
    except Exception as e:
        raise PassError(
            f"pass {name!r} failed: {type(e).__name__}: {e}; passes that ran before it: {', '.join(ctx.ran) or 'none'}"
        ) from e
    seconds = time.perf_counter() - t0
    ctx.ran.append(name)
    ctx.report.passes.append(PassRecord(name=name, modified=result.modified, seconds=seconds, details=result.report))
    _dump(ctx, result.module, name, "after")
    return result.module
