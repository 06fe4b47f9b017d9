"""Decisions without rewriting: what ``compile`` would prune, and why it would skip the rest."""

from __future__ import annotations

from typing import Any

from torch import nn

from graphprune._modules import get_param
from graphprune.analysis.decide import decide, unsupported_decision
from graphprune.analysis.find_sites import find_sites
from graphprune.capture import capture
from graphprune.config import CompileConfig
from graphprune.report import CompileReport


def inspect_model(model: nn.Module, example_inputs: tuple[Any, ...], config: CompileConfig | None = None) -> CompileReport:
    """Decide every site of ``model`` (which must be a copy the caller may lose); no masks, no files.

    With structured patterns the copy is shrunk first, as ``compile`` does (``report.structured``
    lists every group: what would go, and why the rest stays), and the element-wise decisions are
    those of the shrunk model.
    """
    config = config or CompileConfig()
    report = CompileReport(model=type(model).__name__, config=config.to_dict())
    if config.structured_patterns:
        from graphprune.structured import prune_into_report

        prune_into_report(model, tuple(example_inputs), config, report)
    cap = capture(model.eval(), tuple(example_inputs))
    report.capture = cap.record()
    scan = find_sites(cap)
    for site in scan.sites:
        d, _ = decide(site, config)
        d.numel = d.numel or 0
        report.decisions.append(d)
    report.decisions += [
        unsupported_decision(n, tuple(get_param(model, n).shape), why) for n, why in scan.unsupported
    ]
    return report
