"""Configuration objects: frozen, keyword-only dataclasses validated in ``__post_init__``.

Every config round-trips through JSON (``to_dict`` / ``config_from_dict``) so that
``--config file.json`` and the report use the same objects. Invalid values raise
:class:`~graphprune.errors.ConfigError` naming the field and the allowed values (never ``assert``).

Patterns
--------
``Unstructured(sparsity=0.8)``      element-wise magnitude (or random) pruning, per layer or global.
``SemiStructured(n=2, m=4)``        N:M along each weight's reduction axis K (NVIDIA 2:4 by default).
``Channels(ratio=0.5)``             structured: remove output channels / features (physically).
``Heads(ratio=0.25)``               structured: remove attention heads (GQA-aware).
``FFN(ratio=0.5)``                  structured: remove FFN neurons.
``Hidden(ratio=0.25)``              structured: remove hidden-size channels of an RMSNorm residual stream.

Pattern strings (CLI ``--pattern``): ``2:4``, ``4:8``, ``unstructured:0.8``, ``channels:0.5``,
``heads:0.25,ffn:0.5``, ``hidden:0.25``; structured and N:M may be combined (``heads:0.25,2:4``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from graphprune.errors import ConfigError

ScopeT = Literal["layer", "global"]


def _check_ratio(name: str, value: float, *, owner: str, allow_zero: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{owner}.{name} must be a number in [0, 1), got {value!r}")
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        raise ConfigError(
            f"{owner}.{name} must be in [0, 1) (the fraction to remove), got {value!r}; "
            "e.g. 0.5 removes half"
        )


def _check_choice(name: str, value: Any, allowed: tuple[str, ...], *, owner: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{owner}.{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Unstructured:
    """Remove the ``sparsity`` fraction of weights with the smallest magnitude (or at random)."""

    sparsity: float
    scope: ScopeT = "layer"
    method: Literal["magnitude", "random"] = "magnitude"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_ratio("sparsity", self.sparsity, owner="Unstructured")
        _check_choice("scope", self.scope, ("layer", "global"), owner="Unstructured")
        _check_choice("method", self.method, ("magnitude", "random"), owner="Unstructured")

    def __str__(self) -> str:
        extra = "" if self.scope == "layer" else f",{self.scope}"
        return f"unstructured:{self.sparsity:g}{extra}"


@dataclass(frozen=True, kw_only=True)
class SemiStructured:
    """Keep ``n`` of every ``m`` consecutive weights along the reduction axis K.

    ``method``: ``"1d"`` (keep the n largest per group of m, ASP's m4n2_1d), ``"2d_greedy"`` and
    ``"2d_best"`` (m×m blocks that are n:m along both rows and columns, ASP's m4n2_2d_*).
    """

    n: int = 2
    m: int = 4
    method: Literal["1d", "2d_greedy", "2d_best"] = "1d"

    def __post_init__(self) -> None:
        for name in ("n", "m"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"SemiStructured.{name} must be an int, got {v!r}")
        if not (0 < self.n < self.m):
            raise ConfigError(
                f"N:M pattern {self.n}:{self.m} is invalid: need 0 < N < M (keep N of every M), "
                "e.g. 2:4 or 4:8"
            )
        _check_choice("method", self.method, ("1d", "2d_greedy", "2d_best"), owner="SemiStructured")
        if self.method != "1d" and self.m > 8:
            raise ConfigError(f"SemiStructured.method={self.method!r} supports M <= 8, got M={self.m}")

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" + ("" if self.method == "1d" else f"/{self.method}")


@dataclass(frozen=True, kw_only=True)
class Channels:
    """Structured: physically remove ``ratio`` of the output channels/features of each group."""

    ratio: float
    importance: Literal["l1", "l2", "taylor", "bn_scale", "activation"] = "l1"
    scope: ScopeT = "layer"
    round_to: int = 8

    def __post_init__(self) -> None:
        _check_ratio("ratio", self.ratio, owner="Channels")
        _check_choice(
            "importance", self.importance, ("l1", "l2", "taylor", "bn_scale", "activation"), owner="Channels"
        )
        _check_choice("scope", self.scope, ("layer", "global"), owner="Channels")
        if self.round_to < 1:
            raise ConfigError(f"Channels.round_to must be >= 1, got {self.round_to!r}")

    def __str__(self) -> str:
        return f"channels:{self.ratio:g}"


@dataclass(frozen=True, kw_only=True)
class Heads:
    """Structured: remove ``ratio`` of the attention heads of each layer (whole KV groups with GQA)."""

    ratio: float
    importance: Literal["l1", "l2", "taylor"] = "l1"
    min_heads: int = 1

    def __post_init__(self) -> None:
        _check_ratio("ratio", self.ratio, owner="Heads")
        _check_choice("importance", self.importance, ("l1", "l2", "taylor"), owner="Heads")
        if self.min_heads < 1:
            raise ConfigError(f"Heads.min_heads must be >= 1, got {self.min_heads!r}")

    def __str__(self) -> str:
        return f"heads:{self.ratio:g}"


@dataclass(frozen=True, kw_only=True)
class FFN:
    """Structured: remove ``ratio`` of the intermediate neurons of each feed-forward block."""

    ratio: float
    importance: Literal["l1", "l2", "taylor"] = "l1"
    round_to: int = 8

    def __post_init__(self) -> None:
        _check_ratio("ratio", self.ratio, owner="FFN")
        _check_choice("importance", self.importance, ("l1", "l2", "taylor"), owner="FFN")
        if self.round_to < 1:
            raise ConfigError(f"FFN.round_to must be >= 1, got {self.round_to!r}")

    def __str__(self) -> str:
        return f"ffn:{self.ratio:g}"


@dataclass(frozen=True, kw_only=True)
class Hidden:
    """Structured: remove ``ratio`` of the hidden size, the channels of the residual stream, where
    RMSNorm normalizes it (Llama-style). Every producer row (embedding columns, o_proj / down_proj
    rows), every reader column (q/k/v, gate/up, lm_head) and the norm weights go together; each
    RMSNorm's weight is scaled by sqrt(n / n_kept) and its eps by n / n_kept, so the shrunk model
    computes exactly what the masked one does. LayerNorm streams (their mean changes) and streams that
    reach the model output stay dense, with the reason in the report."""

    ratio: float
    importance: Literal["l1", "l2", "taylor"] = "l1"
    round_to: int = 8

    def __post_init__(self) -> None:
        _check_ratio("ratio", self.ratio, owner="Hidden")
        _check_choice("importance", self.importance, ("l1", "l2", "taylor"), owner="Hidden")
        if self.round_to < 1:
            raise ConfigError(f"Hidden.round_to must be >= 1, got {self.round_to!r}")

    def __str__(self) -> str:
        return f"hidden:{self.ratio:g}"


ElementPattern = Union[Unstructured, SemiStructured]
StructuredPattern = Union[Channels, Heads, FFN, Hidden]
STRUCTURED_TYPES = (Channels, Heads, FFN, Hidden)
Pattern = Union[Unstructured, SemiStructured, Channels, Heads, FFN, Hidden]
PATTERN_TYPES: dict[str, type] = {
    "Unstructured": Unstructured,
    "SemiStructured": SemiStructured,
    "Channels": Channels,
    "Heads": Heads,
    "FFN": FFN,
    "Hidden": Hidden,
}

FormT = Literal["masked", "folded"]
OP_TYPES = ("linear", "conv", "conv_transpose", "hf_conv1d", "matmul", "mha")


@dataclass(frozen=True, kw_only=True)
class CompileConfig:
    """What ``graphprune.compile`` does.

    ``pattern``: one element-wise pattern (unstructured or N:M) and/or structured patterns.
    ``include`` / ``exclude``: fnmatch globs over module fqns (a site is a candidate when it matches
    some include glob, or include is empty, and matches no exclude glob).
    ``op_types``: restrict candidates to these op kinds (see ``OP_TYPES``); empty means all.
    ``overrides``: fqn glob -> pattern or ``None`` (leave dense); the last matching glob wins.
    ``form``: ``"folded"`` (zeros baked into plain weights; what TensorRT reads) or ``"masked"``
    (mask buffers, trainable, gradients masked).
    ``prune_tied``: prune weights shared by several modules (masks then apply to every use).
    ``permute``: before N:M masks, permute coupled channels so the masks keep more magnitude (the
    dense function is unchanged); ``permute_budget_s`` is the search time per channel group.
    """

    pattern: tuple[Pattern, ...] = (SemiStructured(),)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()
    overrides: Mapping[str, Pattern | None] = field(default_factory=dict)
    form: FormT = "folded"
    prune_tied: bool = False
    permute: bool = False
    permute_budget_s: float = 2.0
    export_onnx: bool = True
    validate: bool = True
    opset: int | None = None

    def __post_init__(self) -> None:
        pat = self.pattern
        if not isinstance(pat, tuple):
            pat = (pat,) if not isinstance(pat, list) else tuple(pat)
            object.__setattr__(self, "pattern", pat)
        for p in self.pattern:
            if not isinstance(p, tuple(PATTERN_TYPES.values())):
                raise ConfigError(
                    f"CompileConfig.pattern entries must be pattern objects "
                    f"({', '.join(PATTERN_TYPES)}), got {p!r}; use parse_pattern('2:4') for strings"
                )
        element = [p for p in self.pattern if isinstance(p, (Unstructured, SemiStructured))]
        if len(element) > 1:
            raise ConfigError(
                f"CompileConfig.pattern has {len(element)} element-wise patterns ({', '.join(map(str, element))}); "
                "give at most one of unstructured or N:M"
            )
        for kind in STRUCTURED_TYPES:
            if sum(isinstance(p, kind) for p in self.pattern) > 1:
                raise ConfigError(f"CompileConfig.pattern names {kind.__name__} twice")
        for name in ("include", "exclude", "op_types"):
            v = getattr(self, name)
            if isinstance(v, str):
                v = (v,)
            object.__setattr__(self, name, tuple(v))
        for t in self.op_types:
            _check_choice("op_types", t, OP_TYPES, owner="CompileConfig")
        for glob, ov in dict(self.overrides).items():
            if not isinstance(glob, str):
                raise ConfigError(f"CompileConfig.overrides keys must be fqn glob strings, got {glob!r}")
            if ov is not None and not isinstance(ov, (Unstructured, SemiStructured)):
                raise ConfigError(
                    f"CompileConfig.overrides[{glob!r}] must be an element-wise pattern or None, got {ov!r}"
                )
        _check_choice("form", self.form, ("masked", "folded"), owner="CompileConfig")
        b = self.permute_budget_s
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not b >= 0:
            raise ConfigError(f"CompileConfig.permute_budget_s must be a number of seconds >= 0, got {b!r}")

    @property
    def element_pattern(self) -> ElementPattern | None:
        for p in self.pattern:
            if isinstance(p, (Unstructured, SemiStructured)):
                return p
        return None

    @property
    def structured_patterns(self) -> tuple[StructuredPattern, ...]:
        return tuple(p for p in self.pattern if isinstance(p, STRUCTURED_TYPES))

    def selects(self, *names: str) -> bool:
        """True where the include/exclude globs make a site a candidate.

        ``names`` are the site's aliases (module fqn, parameter fqn): it is included when any
        matches an include glob (or include is empty) and excluded when any matches an exclude glob.
        """
        def hit(globs: tuple[str, ...]) -> bool:
            return any(fnmatch.fnmatchcase(n, g) for n in names for g in globs)

        if self.include and not hit(self.include):
            return False
        return not hit(self.exclude)

    def pattern_for(self, fqn: str) -> tuple[ElementPattern | None, str | None]:
        """The element-wise pattern for a site and the override glob that chose it (if any)."""
        chosen: tuple[ElementPattern | None, str | None] = (self.element_pattern, None)
        for glob, p in dict(self.overrides).items():
            if fnmatch.fnmatchcase(fqn, glob) and (p is None or isinstance(p, (Unstructured, SemiStructured))):
                chosen = (p, glob)
        return chosen

    def to_dict(self) -> dict[str, Any]:
        return {
            "pattern": [pattern_to_dict(p) for p in self.pattern],
            "include": list(self.include),
            "exclude": list(self.exclude),
            "op_types": list(self.op_types),
            "overrides": {g: (None if p is None else pattern_to_dict(p)) for g, p in dict(self.overrides).items()},
            "form": self.form,
            "prune_tied": self.prune_tied,
            "permute": self.permute,
            "permute_budget_s": self.permute_budget_s,
            "export_onnx": self.export_onnx,
            "validate": self.validate,
            "opset": self.opset,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompileConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"unknown CompileConfig field(s) {sorted(unknown)}; known fields: {sorted(known)}"
            )
        kw = dict(d)
        if "pattern" in kw:
            raw = kw["pattern"]
            if isinstance(raw, str):
                kw["pattern"] = parse_pattern(raw)
            else:
                kw["pattern"] = tuple(pattern_from_dict(p) for p in raw)
        if "overrides" in kw:
            kw["overrides"] = {
                g: (None if p is None else (parse_pattern(p)[0] if isinstance(p, str) else pattern_from_dict(p)))
                for g, p in kw["overrides"].items()
            }
        for name in ("include", "exclude", "op_types"):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | Path) -> CompileConfig:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {p} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a JSON object of CompileConfig fields")
        return cls.from_dict(data)


def pattern_to_dict(p: Pattern) -> dict[str, Any]:
    d = dataclasses.asdict(p)
    d["type"] = type(p).__name__
    return d


def pattern_from_dict(d: Mapping[str, Any]) -> Pattern:
    if not isinstance(d, Mapping) or "type" not in d:
        raise ConfigError(f"a pattern must be an object with a 'type' field ({', '.join(PATTERN_TYPES)}), got {d!r}")
    kw = dict(d)
    t = kw.pop("type")
    if t not in PATTERN_TYPES:
        raise ConfigError(f"unknown pattern type {t!r}; known: {', '.join(PATTERN_TYPES)}")
    try:
        return PATTERN_TYPES[t](**kw)  # type: ignore[no-any-return]
    except TypeError as e:
        raise ConfigError(f"bad fields for pattern {t}: {e}") from e


_PATTERN_HELP = (
    "use N:M (e.g. 2:4, 4:8), unstructured:S with S in [0, 1) (e.g. unstructured:0.8), "
    "channels:R, heads:R, ffn:R, hidden:R, or a comma-separated combination such as heads:0.25,ffn:0.5"
)


def _parse_float(text: str, whole: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"pattern {whole!r}: {text!r} is not a number; {_PATTERN_HELP}") from None


def parse_pattern(text: str) -> tuple[Pattern, ...]:
    """Parse a CLI pattern string such as ``"2:4"``, ``"unstructured:0.8"`` or ``"heads:0.25,ffn:0.5"``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"pattern must be a non-empty string; {_PATTERN_HELP}")
    out: list[Pattern] = []
    for part in (s.strip() for s in text.split(",")):
        if not part:
            raise ConfigError(f"pattern {text!r} has an empty part; {_PATTERN_HELP}")
        head, _, rest = part.partition(":")
        key = head.lower()
        if not rest:
            raise ConfigError(f"pattern {part!r} is not understood; {_PATTERN_HELP}")
        if key.isdigit():
            n_text, _, method = rest.partition("/")
            if not n_text.isdigit():
                raise ConfigError(f"pattern {part!r} is not understood; {_PATTERN_HELP}")
            n, m = int(head), int(n_text)
            if not (0 < n < m):
                raise ConfigError(
                    f"pattern {part!r}: N:M needs 0 < N < M (keep N of every M), e.g. 2:4 or 4:8"
                )
            out.append(SemiStructured(n=n, m=m, method=method or "1d"))  # type: ignore[arg-type]
        elif key == "unstructured":
            value, _, scope = rest.partition("@")
            sp = _parse_float(value, part)
            if not (0 <= sp < 1):
                raise ConfigError(
                    f"pattern {part!r}: unstructured sparsity must be in [0, 1) (the fraction of zeros), got {sp:g}"
                )
            out.append(Unstructured(sparsity=sp, scope=(scope or "layer")))  # type: ignore[arg-type]
        elif key in ("channels", "heads", "ffn", "hidden"):
            r = _parse_float(rest, part)
            if not (0 <= r < 1):
                raise ConfigError(f"pattern {part!r}: ratio must be in [0, 1) (the fraction removed), got {r:g}")
            cls = {"channels": Channels, "heads": Heads, "ffn": FFN, "hidden": Hidden}[key]
            out.append(cls(ratio=r))
        else:
            raise ConfigError(f"pattern {part!r} is not understood; {_PATTERN_HELP}")
    CompileConfig(pattern=tuple(out))  # validates combinations
    return tuple(out)
