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
    """Capture ``model`` (which must be a copy the caller may lose) and decide every site; no masks."""
    config = config or CompileConfig()
    cap = capture(model.eval(), tuple(example_inputs))
    scan = find_sites(cap)
    report = CompileReport(model=type(model).__name__, capture=cap.record(), config=config.to_dict())
    for site in scan.sites:
        d, _ = decide(site, config)
        d.numel = d.numel or 0
        report.decisions.append(d)
    report.decisions += [
        unsupported_decision(n, tuple(get_param(model, n).shape), why) for n, why in scan.unsupported
    ]
    return report
