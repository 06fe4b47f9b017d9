"""Decisions and reports.

Every candidate site gets exactly one :class:`Decision`: pruned with a pattern, or skipped with a
:class:`SkipReason` and a message naming the layer (and the user's source line where known).
A :class:`CompileReport` gathers the capture record, per-pass records, per-layer decisions, the
ONNX audit and the parity statistics; it serializes to JSON and renders as a table.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SkipReason(str, enum.Enum):
    K_NOT_DIVISIBLE = "k_not_divisible"
    TIED_WEIGHT = "tied_weight"
    EXCLUDED_BY_FILTER = "excluded_by_filter"
    EXCLUDED_BY_OVERRIDE = "excluded_by_override"
    OP_TYPE_FILTERED = "op_type_filtered"
    UNSUPPORTED_OP = "unsupported_op"
    TOO_SMALL = "too_small"
    NOT_FLOATING = "not_floating"
    NO_PATTERN = "no_pattern"
    UNSLICEABLE_GROUP = "unsliceable_group"
    ACCURACY_BUDGET = "accuracy_budget"  # left dense so the fidelity meets --max-drift / --min-cosine
    NOT_IN_PLAN = "not_in_plan"  # --plan names no mask for it


@dataclass
class Decision:
    """What happened to one candidate weight."""

    param: str  # parameter fqn, e.g. "encoder.layer.0.attention.self.query.weight"
    module: str  # owning module fqn
    op: str  # op kind: linear, conv2d, hf_conv1d, matmul, mha_in_proj, ...
    shape: tuple[int, ...]
    k_axis: int
    pruned: bool
    pattern: str | None = None
    reason: SkipReason | None = None
    message: str = ""
    flops: int = 0
    numel: int = 0
    zeros: int = 0
    kept_magnitude: float | None = None  # sum|W*mask| / sum|W|
    source: str | None = None  # user's source line, when the graph knows it
    shrunk_from: tuple[int, ...] | None = None  # the weight's shape before structured pruning shrank it

    @property
    def summary(self) -> str:
        """What happened, in a few words: the pattern, ``shrunk``, or ``skip:<reason>``."""
        shrunk = "shrunk " + "x".join(map(str, self.shrunk_from)) + "->" + "x".join(map(str, self.shape)) if self.shrunk_from else ""
        if self.pruned:
            return f"{self.pattern} ({shrunk})" if shrunk else str(self.pattern)
        if shrunk and self.reason in (None, SkipReason.NO_PATTERN):
            return shrunk
        return f"skip:{self.reason.value if self.reason else '?'}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["shrunk_from"] = list(self.shrunk_from) if self.shrunk_from else None
        d["reason"] = self.reason.value if self.reason else None
        return d


@dataclass
class PassRecord:
    name: str
    modified: bool
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompileReport:
    """Everything one compile run decided and measured."""

    model: str = ""
    capture: dict[str, Any] = field(default_factory=dict)  # method, tried: [{method, ok, error}]
    config: dict[str, Any] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    passes: list[PassRecord] = field(default_factory=list)
    structured: list[dict[str, Any]] = field(default_factory=list)
    audit: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    fidelity: dict[str, Any] | None = None  # pruned vs DENSE model (what pruning cost), not ONNX parity
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # ---- summaries -------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Decision counts: ``pruned`` and one entry per skip reason."""
        out: dict[str, int] = {"pruned": 0}
        for d in self.decisions:
            if d.pruned or d.summary.startswith("shrunk"):
                key = "pruned" if d.pruned else "shrunk"
            else:
                key = d.reason.value if d.reason else "skipped"
            out[key] = out.get(key, 0) + 1
        return out

    def totals(self) -> dict[str, Any]:
        numel = sum(d.numel for d in self.decisions)
        zeros = sum(d.zeros for d in self.decisions)
        flops = sum(d.flops for d in self.decisions)
        pruned_flops = sum(d.flops * (d.zeros / d.numel) for d in self.decisions if d.numel)
        return {
            "sites": len(self.decisions),
            "pruned_sites": sum(d.pruned for d in self.decisions),
            "params": numel,
            "zeros": zeros,
            "sparsity": (zeros / numel) if numel else 0.0,
            "flops": flops,
            "flops_on_zeros": int(pruned_flops),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "capture": self.capture,
            "config": self.config,
            "counts": self.counts(),
            "totals": self.totals(),
            "decisions": [d.to_dict() for d in self.decisions],
            "passes": [dataclasses.asdict(p) for p in self.passes],
            "structured": self.structured,
            "audit": self.audit,
            "parity": self.parity,
            "fidelity": self.fidelity,
            "timings": self.timings,
            "outputs": self.outputs,
            "notes": self.notes,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, default=_json_default)
        if path is not None:
            from graphprune.io.files import atomic_write_text

            atomic_write_text(Path(path), text)
        return text

    def table(self, max_rows: int | None = None) -> str:
        """A per-layer text table with totals."""
        # the output error each layer's pruning introduced on its calibration inputs (calibrated masks only)
        errors = {e["param"]: e["output_error"] for e in (self.fidelity or {}).get("layers", [])}
        head = f"{'layer':<52} {'op':<11} {'shape':<18} {'decision':<26} {'zeros':>7} {'kept|W|':>8} {'MFLOPs':>9}"
        if errors:
            head += f" {'out err':>8}"
        lines = [head, "-" * len(head)]
        rows = self.decisions if max_rows is None else self.decisions[:max_rows]
        for d in rows:
            what = d.summary
            sp = f"{d.zeros / d.numel:.1%}" if d.numel else "-"
            km = f"{d.kept_magnitude:.3f}" if d.kept_magnitude is not None else "-"
            name = d.param if len(d.param) <= 52 else "…" + d.param[-51:]
            shape = "x".join(map(str, d.shape))
            row = f"{name:<52} {d.op:<11} {shape:<18} {what:<26} {sp:>7} {km:>8} {d.flops / 1e6:>9.2f}"
            if errors:
                row += f" {errors[d.param]:>8.3f}" if d.param in errors else f" {'-':>8}"
            lines.append(row)
        if max_rows is not None and len(self.decisions) > max_rows:
            lines.append(f"... {len(self.decisions) - max_rows} more layers (see report.json)")
        t = self.totals()
        lines.append("-" * len(head))
        lines.append(
            f"sites {t['sites']}  pruned {t['pruned_sites']}  params {t['params']:,}  zeros {t['zeros']:,} "
            f"({t['sparsity']:.1%})  FLOPs {t['flops'] / 1e6:,.1f}M (on zeros {t['flops_on_zeros'] / 1e6:,.1f}M)"
        )
        if errors:
            lines.append("out err: ||W X - W' X|| / ||W X|| on the layer's calibration inputs (where the damage is)")
        skipped = {k: v for k, v in self.counts().items() if k not in ("pruned", "shrunk")}
        if self.counts().get("shrunk"):
            lines.append(f"shrunk by structured pruning (no element-wise pattern): {self.counts()['shrunk']}")
        if skipped:
            lines.append("skipped: " + ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())))
        return "\n".join(lines)


def structured_table(groups: list[dict[str, Any]], max_rows: int | None = None) -> str:
    """Per-group table of structured pruning: what was removed, and why a group was left dense."""
    head = f"{'group':<44} {'kind':<9} {'units':>13} {'channels':>15} {'members':>7}  note"
    lines = [head, "-" * len(head)]
    rows = groups if max_rows is None else groups[:max_rows]
    for g in rows:
        name = g["name"] if len(g["name"]) <= 44 else "…" + g["name"][-43:]
        units = f"{g['units_before']}->{g['units_after']}"
        chans = f"{g['channels_before']}->{g['channels_after']}"
        why = " ".join(str(x) for x in (g.get("reason"), g.get("message", "")) if x)
        note = (g.get("pattern") or "") if g["pruned"] else "dense: " + textwrap.shorten(why, 100, placeholder=" …")
        lines.append(f"{name:<44} {g['kind']:<9} {units:>13} {chans:>15} {len(g['members']):>7}  {note}")
    if max_rows is not None and len(groups) > max_rows:
        lines.append(f"... {len(groups) - max_rows} more groups (see report.json)")
    return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, tuple):
        return list(o)
    return str(o)
