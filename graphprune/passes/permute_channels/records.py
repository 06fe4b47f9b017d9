"""What pass ``permute-channels`` records and takes: its options, and per group / per layer how much
magnitude the N:M masks keep without and with the permutation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from graphprune.errors import ConfigError

__all__ = ["GroupPermutation", "LayerEfficacy", "PermutationReport", "PermuteChannelsConfig"]


@dataclass(frozen=True, kw_only=True)
class PermuteChannelsConfig:
    """``time_budget_s``: search time per channel group (per KV group inside attention heads: each
    head's search is its own); ``total_budget_s``: search time for the whole model (None: no cap;
    groups left when it is spent stay unpermuted, with that reason)."""

    n: int = 2
    m: int = 4
    time_budget_s: float = 2.0
    total_budget_s: float | None = None
    seed: int = 0
    verify: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("n", "m"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"PermuteChannelsConfig.{name} must be an int, got {v!r}")
        if not 0 < self.n < self.m:
            raise ConfigError(f"PermuteChannelsConfig: N:M {self.n}:{self.m} is invalid, need 0 < N < M")
        for name in ("time_budget_s", "total_budget_s"):
            v = getattr(self, name)
            if v is None and name == "total_budget_s":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ConfigError(f"PermuteChannelsConfig.{name} must be a number of seconds >= 0, got {v!r}")


@dataclass
class LayerEfficacy:
    """Magnitude kept by one layer's N:M mask without and with the permutation."""

    param: str
    shape: tuple[int, ...]
    k_axis: int
    kept_before: float
    kept_after: float
    total: float  # sum |W| (weights the overall figure)
    group: int | None = None
    permuted: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class GroupPermutation:
    group: int
    name: str
    kind: str
    channels: int
    consumers: list[str]
    members: int
    permuted: bool
    reason: str = ""
    seconds: float = 0.0
    iterations: int = 0
    kept_before: float = 0.0  # over the stacked consumers
    kept_after: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PermutationReport:
    n: int
    m: int
    layers: list[LayerEfficacy] = field(default_factory=list)
    groups: list[GroupPermutation] = field(default_factory=list)
    seconds: float = 0.0
    search_seconds: float = 0.0
    verified: dict[str, Any] | None = None
    skipped: str = ""  # why nothing was searched (no N:M pattern)

    def overall(self, *, permuted_only: bool = False) -> tuple[float, float]:
        """(kept before, kept after) over all N:M layers, weighted by each layer's ``sum |W|``."""
        rows = [lay for lay in self.layers if lay.permuted or not permuted_only]
        tot = sum(lay.total for lay in rows)
        if tot == 0:
            return 1.0, 1.0
        return (sum(lay.kept_before * lay.total for lay in rows) / tot, sum(lay.kept_after * lay.total for lay in rows) / tot)

    @property
    def permuted_groups(self) -> list[GroupPermutation]:
        return [g for g in self.groups if g.permuted]

    def to_dict(self) -> dict[str, Any]:
        before, after = self.overall()
        pb, pa = self.overall(permuted_only=True)
        return {
            "pattern": f"{self.n}:{self.m}",
            "overall": {"kept_before": before, "kept_after": after, "permuted_kept_before": pb, "permuted_kept_after": pa},
            "seconds": self.seconds,
            "search_seconds": self.search_seconds,
            "verified": self.verified,
            "skipped": self.skipped,
            "groups": [g.to_dict() for g in self.groups],
            "layers": [lay.to_dict() for lay in self.layers],
        }

    def table(self) -> str:
        head = f"{'layer':<52} {'kept before':>11} {'kept after':>10} {'gain':>7}  note"
        lines = [head, "-" * len(head)]
        for lay in self.layers:
            name = lay.param if len(lay.param) <= 52 else "…" + lay.param[-51:]
            gain = lay.kept_after - lay.kept_before
            note = "permuted" if lay.permuted else lay.reason
            lines.append(f"{name:<52} {lay.kept_before:>11.4f} {lay.kept_after:>10.4f} {gain:>+7.4f}  {note}")
        before, after = self.overall()
        lines.append("-" * len(head))
        lines.append(
            f"overall {self.n}:{self.m} kept magnitude {before:.4f} -> {after:.4f} ({after - before:+.4f}); "
            f"{len(self.permuted_groups)}/{len(self.groups)} groups permuted; search {self.search_seconds:.1f}s, total {self.seconds:.1f}s"
        )
        return "\n".join(lines)
