"""The results of ``graphprune bench``: per-layer and end-to-end timings, the table and the chart.

:class:`BenchReport` holds what :func:`graphprune.bench.bench_model` measured (medians and minima
in ms; ``ratio`` is ``dense / pruned``, > 1 means the pruned model is faster); ``to_dict`` is what
``bench.json`` holds, ``table`` what the CLI prints, and :func:`save_chart` draws ``bench.png``
(matplotlib, Agg backend). Nothing here times or runs a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphprune.errors import DependencyError


@dataclass
class LayerTiming:
    name: str
    op: str = ""
    dense_ms: float | None = None  # median
    pruned_ms: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.dense_ms is None or not self.pruned_ms:
            return None
        return self.dense_ms / self.pruned_ms

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ratio": self.ratio}


@dataclass
class BenchReport:
    model: str
    runtime: str
    pattern: str
    end_to_end: dict[str, dict[str, float]] = field(default_factory=dict)  # {"dense"|"pruned": {min_ms, median_ms}}
    layers: list[LayerTiming] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    forms: list[dict[str, Any]] = field(default_factory=list)  # torch: runtime form per Linear
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        e = self.end_to_end
        if "dense" not in e or "pruned" not in e or not e["pruned"].get("median_ms"):
            return None
        return e["dense"]["median_ms"] / e["pruned"]["median_ms"]

    def spread(self, side: str) -> float | None:
        """How far one side's block timings spread: ``(max - min) / median`` (0.1 = 10 %); None without samples."""
        t = self.end_to_end.get(side) or {}
        lo, hi, med = t.get("min_ms"), t.get("max_ms"), t.get("median_ms")
        if lo is None or hi is None or not med:
            return None
        return (hi - lo) / med

    @property
    def conclusive(self) -> bool | None:
        """False when the spread of either side's timings is larger than the difference between the medians."""
        r = self.ratio
        spreads = [x for x in (self.spread("dense"), self.spread("pruned")) if x is not None]
        if r is None or not spreads:
            return None
        return abs(r - 1.0) > max(spreads)

    def verdict(self) -> str:
        """Which way is faster, in words, and whether the timings' spread allows saying so."""
        r = self.ratio
        if r is None:
            return "no end-to-end timing"
        faster = f"pruned is {r:.2f}x faster than dense" if r >= 1 else f"pruned is {1 / r:.2f}x SLOWER than dense (zeros are not faster here)"
        if self.conclusive is False:
            noise = max(x for x in (self.spread("dense"), self.spread("pruned")) if x is not None)
            return (f"no clear difference: the medians differ by {abs(r - 1) * 100:.1f}% but the timings spread by "
                    f"{noise * 100:.1f}% (min to max over the blocks); {faster.split(' (')[0]} at the median only. "
                    "Rerun on a quiet machine or with more --blocks")
        return faster

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "runtime": self.runtime,
            "pattern": self.pattern,
            "end_to_end": self.end_to_end,
            "ratio": self.ratio,
            "spread": {k: self.spread(k) for k in self.end_to_end},
            "conclusive": self.conclusive,
            "verdict": self.verdict(),
            "layers": [lay.to_dict() for lay in self.layers],
            "settings": self.settings,
            "forms": self.forms,
            "notes": self.notes,
            "outputs": self.outputs,
        }

    def table(self, max_rows: int | None = 40) -> str:
        lines = [
            f"{self.model}: {self.pattern} on {self.runtime} ({self.settings.get('machine', '')})",
        ]
        head = f"{'layer':<56} {'op':<10} {'dense ms':>9} {'pruned ms':>9} {'ratio':>6}  note"
        lines += [head, "-" * len(head)]
        rows = sorted(self.layers, key=lambda r: -(r.dense_ms or 0.0))
        shown = rows if max_rows is None else rows[:max_rows]
        for r in shown:
            name = r.name if len(r.name) <= 56 else "…" + r.name[-55:]

            def ms(v: float | None) -> str:
                return f"{v:.3f}" if v is not None else "-"

            ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
            lines.append(f"{name:<56} {r.op[:10]:<10} {ms(r.dense_ms):>9} {ms(r.pruned_ms):>9} {ratio:>6}  {r.note}")
        if len(rows) > len(shown):
            lines.append(f"... {len(rows) - len(shown)} more layers (see bench.json)")
        lines.append("-" * len(head))
        e = self.end_to_end
        if e:
            def side(k: str) -> str:
                t, sp = e[k], self.spread(k)
                return (f"{k} median {t['median_ms']:.3f} ms (min {t['min_ms']:.3f}"
                        + (f", spread {sp * 100:.1f}%)" if sp is not None else ")"))

            lines.append(f"end to end: {side('dense')}, {side('pruned')}; dense/pruned = {self.ratio:.2f}x")
            lines.append(("warning: " if self.conclusive is False else "verdict: ") + self.verdict())
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def save_chart(report: BenchReport, path: str | Path, *, top: int = 20) -> Path:
    """End-to-end bars and the ``top`` slowest layers (dense vs pruned medians) as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise DependencyError("the bench chart needs matplotlib: pip install 'graphprune[plots]'") from e
    path = Path(path)
    layers = [r for r in sorted(report.layers, key=lambda r: -(r.dense_ms or 0.0)) if r.dense_ms is not None][:top]
    fig, axes = plt.subplots(1, 2, figsize=(13, max(3.5, 0.32 * len(layers) + 1.5)), gridspec_kw={"width_ratios": [1, 3]})
    ax = axes[0]
    e2e = report.end_to_end
    if e2e:
        keys = ["dense", "pruned"]
        med = [e2e[k]["median_ms"] for k in keys]
        lo = [med[i] - e2e[k]["min_ms"] for i, k in enumerate(keys)]
        hi = [e2e[k].get("max_ms", med[i]) - med[i] for i, k in enumerate(keys)]
        ax.bar(keys, med, color=["#7f7f7f", "#1f77b4"], yerr=[lo, hi], capsize=8)
        ratio = report.ratio
        if ratio is None:
            ax.set_title("end to end")
        elif report.conclusive is False:
            ax.set_title(f"end to end: no clear difference\n({ratio:.2f}x at the median, within the spread)", fontsize=9)
        else:
            ax.set_title(f"end to end: pruned {ratio:.2f}x faster" if ratio >= 1 else f"end to end: pruned {1 / ratio:.2f}x SLOWER", fontsize=9)
        ax.set_ylabel("ms (bar = median, whiskers = min..max over blocks)")
    ax = axes[1]
    if layers:
        ys = range(len(layers))
        d = [r.dense_ms or 0.0 for r in layers]
        p = [r.pruned_ms or 0.0 for r in layers]
        ax.barh([y - 0.2 for y in ys], d, height=0.4, color="#7f7f7f", label="dense")
        ax.barh([y + 0.2 for y in ys], p, height=0.4, color="#1f77b4", label="pruned")
        ax.set_yticks(list(ys))
        ax.set_yticklabels([r.name if len(r.name) <= 48 else "…" + r.name[-47:] for r in layers], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("ms (median)")
        ax.legend(loc="lower right")
        ax.set_title(f"slowest {len(layers)} layers")
    else:
        ax.axis("off")
    fig.suptitle(f"{report.model}: {report.pattern} on {report.runtime} — {report.settings.get('machine', '')}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
