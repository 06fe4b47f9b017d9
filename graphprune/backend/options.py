"""What the ``graphprune`` torch.compile backend takes (:class:`BackendOptions`, from
``torch.compile(..., options={...})``) and what it records per compiled graph (:class:`BackendReport`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from graphprune.config import SemiStructured, Unstructured, parse_pattern
from graphprune.errors import ConfigError

__all__ = ["OPTION_KEYS", "BackendOptions", "BackendReport"]

OPTION_KEYS = ("pattern", "accelerate", "inductor", "measure", "csr_threshold", "min_speedup", "fp32_policy", "cudagraphs", "alg_cache")


@dataclass(frozen=True, kw_only=True)
class BackendOptions:
    """``pattern`` (an element-wise pattern or its string, default None: no pruning), ``accelerate`` (sparse
    runtime forms, True), ``inductor`` (True), ``measure`` (time before converting, True), ``csr_threshold``
    (0.85), ``min_speedup`` (1.05), ``fp32_policy`` ("skip" | "fp16" | "bf16"), ``cudagraphs`` (None:
    automatic | bool), ``alg_cache`` (path of the JSON cuSPARSELt algorithm cache)."""

    pattern: SemiStructured | Unstructured | None = None
    accelerate: bool = True
    inductor: bool = True
    measure: bool = True
    csr_threshold: float = 0.85
    min_speedup: float = 1.05
    fp32_policy: str = "skip"
    cudagraphs: bool | None = None
    alg_cache: str | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> BackendOptions:
        opts = dict(options or {})
        unknown = sorted(set(opts) - set(OPTION_KEYS))
        if unknown:
            raise ConfigError(f"unknown graphprune backend option(s) {unknown}; known: {list(OPTION_KEYS)}")
        pat = opts.get("pattern")
        if isinstance(pat, str):
            parsed = parse_pattern(pat)
            element = [p for p in parsed if isinstance(p, (SemiStructured, Unstructured))]
            if len(parsed) != 1 or not element:
                raise ConfigError(
                    f"backend option pattern={pat!r}: the torch.compile backend prunes element-wise only "
                    "(e.g. '2:4', '4:8', 'unstructured:0.9'); use graphprune.compile for structured pruning"
                )
            opts["pattern"] = element[0]
        elif pat is not None and not isinstance(pat, (SemiStructured, Unstructured)):
            raise ConfigError(f"backend option pattern must be a string like '2:4' or a pattern object, got {pat!r}")
        if isinstance(opts.get("pattern"), Unstructured) and opts["pattern"].scope != "layer":
            raise ConfigError("backend option pattern: unstructured pruning in the backend is per layer (scope='layer')")
        for key in ("accelerate", "inductor", "measure"):
            if key in opts and not isinstance(opts[key], bool):
                raise ConfigError(f"backend option {key} must be True or False, got {opts[key]!r}")
        if opts.get("cudagraphs") is not None and not isinstance(opts["cudagraphs"], bool):
            raise ConfigError(f"backend option cudagraphs must be None (automatic), True or False, got {opts['cudagraphs']!r}")
        if opts.get("alg_cache") is not None:
            opts["alg_cache"] = str(opts["alg_cache"])
        return cls(**opts)

    def forms_config(self, mode: str = "eager") -> Any:
        from graphprune.passes.convert_sparse_forms import SparseFormsConfig

        return SparseFormsConfig(
            csr_threshold=self.csr_threshold,
            min_speedup=self.min_speedup,
            measure=self.measure,
            fp32_policy=self.fp32_policy,  # type: ignore[arg-type]
            mode=mode,  # type: ignore[arg-type]
            alg_cache=self.alg_cache,
        )


@dataclass
class BackendReport:
    """What one compiled graph got."""

    pruned: list[dict[str, Any]] = field(default_factory=list)  # {weight, op, k_axis, pattern, kept_magnitude}
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {weight, reason}
    forms: list[dict[str, Any]] = field(default_factory=list)  # LayerForm records
    compiler: str = ""  # "inductor" or "eager (...reason...)"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
