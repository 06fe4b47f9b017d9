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

Pattern strings (CLI ``--pattern``, and ``str(pattern)``): ``2:4``, ``4:8``, ``unstructured:0.8``,
``channels:0.5``, ``heads:0.25,ffn:0.5``, ``hidden:0.25``; structured and N:M may be combined
(``heads:0.25,2:4``). Fields other than the number are written as ``@`` options after it: a choice
by its value, other fields as ``name=value``, e.g. ``unstructured:0.8@global``,
``unstructured:0.5@random@seed=3``, ``2:4@2d_greedy`` (also ``2:4/2d_greedy``),
``channels:0.5@l2@global@round_to=4``, ``heads:0.25@taylor@min_heads=2``. ``str(p)`` writes only the
fields that differ from their defaults, and ``parse_pattern(str(p)) == (p,)`` for every pattern.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from graphprune.errors import ConfigError
from graphprune.selector import Selector, matches_any

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


def _check_int(name: str, value: Any, *, owner: str, low: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}.{name} must be an int, got {value!r} ({type(value).__name__})")
    if low is not None and value < low:
        raise ConfigError(f"{owner}.{name} must be >= {low}, got {value!r}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...], *, owner: str) -> None:
    if not isinstance(value, str) or value not in allowed:
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
        _check_int("seed", self.seed, owner="Unstructured")

    def __str__(self) -> str:
        return pattern_to_str(self)


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
        return pattern_to_str(self)


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
        _check_int("round_to", self.round_to, owner="Channels", low=1)

    def __str__(self) -> str:
        return pattern_to_str(self)


@dataclass(frozen=True, kw_only=True)
class Heads:
    """Structured: remove ``ratio`` of the attention heads of each layer (whole KV groups with GQA)."""

    ratio: float
    importance: Literal["l1", "l2", "taylor"] = "l1"
    min_heads: int = 1

    def __post_init__(self) -> None:
        _check_ratio("ratio", self.ratio, owner="Heads")
        _check_choice("importance", self.importance, ("l1", "l2", "taylor"), owner="Heads")
        _check_int("min_heads", self.min_heads, owner="Heads", low=1)

    def __str__(self) -> str:
        return pattern_to_str(self)


@dataclass(frozen=True, kw_only=True)
class FFN:
    """Structured: remove ``ratio`` of the intermediate neurons of each feed-forward block."""

    ratio: float
    importance: Literal["l1", "l2", "taylor"] = "l1"
    round_to: int = 8

    def __post_init__(self) -> None:
        _check_ratio("ratio", self.ratio, owner="FFN")
        _check_choice("importance", self.importance, ("l1", "l2", "taylor"), owner="FFN")
        _check_int("round_to", self.round_to, owner="FFN", low=1)

    def __str__(self) -> str:
        return pattern_to_str(self)


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
        _check_int("round_to", self.round_to, owner="Hidden", low=1)

    def __str__(self) -> str:
        return pattern_to_str(self)


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
METHODS = ("magnitude", "wanda", "sparsegpt")
DTYPES = ("float32", "float16", "bfloat16")


def check_dynamic_axes(value: Any, *, owner: str) -> dict[str, dict[int, str]]:
    """``{input or output name: {axis: label}}`` (JSON's string axes accepted); ConfigError naming ``owner`` otherwise."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{owner}.dynamic_axes must map names to {{axis: label}}, got {value!r}")
    axes: dict[str, dict[int, str]] = {}
    for name, dims in value.items():
        if not isinstance(name, str) or not isinstance(dims, Mapping):
            raise ConfigError(f"{owner}.dynamic_axes must map input names to {{axis: label}}, got {name!r}: {dims!r}")
        out: dict[int, str] = {}
        for ax, label in dims.items():
            a = int(ax) if isinstance(ax, str) and ax.isdigit() else ax
            if isinstance(a, bool) or not isinstance(a, int) or a < 0 or not isinstance(label, str) or not label:
                raise ConfigError(f"{owner}.dynamic_axes[{name!r}] must map axis (int >= 0) to a label, got {ax!r}: {label!r}")
            out[a] = label
        axes[name] = out
    return axes
OP_TYPES = ("linear", "conv", "conv_transpose", "hf_conv1d", "matmul", "mha")
# torch.onnx's dynamo exporter implements opset 18 and up (lower versions are silently exported as 18)
MIN_OPSET = 18


def max_opset() -> int:
    """The newest opset the installed onnx package knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


@dataclass(frozen=True, kw_only=True)
class CompileConfig:
    """What ``graphprune.compile`` does.

    ``pattern``: one element-wise pattern (unstructured or N:M) and/or structured patterns; a pattern
    object, a pattern string (``"2:4"``, ``"heads:0.25,ffn:0.5"``), a dict with ``"type"`` (as in
    ``to_dict``), or a list of these.
    ``include`` / ``exclude``: fnmatch globs over module fqns (a site is a candidate when it matches
    some include glob, or include is empty, and matches no exclude glob); a string or a list of strings.
    ``op_types``: restrict candidates to these op kinds (see ``OP_TYPES``); empty means all.
    ``overrides``: fqn glob -> element-wise pattern (object, string or dict) or ``None`` / ``"dense"``
    (leave dense); the last matching glob wins.
    ``form``: ``"folded"`` (zeros baked into plain weights; what TensorRT reads) or ``"masked"``
    (mask buffers, trainable, gradients masked).
    ``prune_tied``: prune weights shared by several modules (masks then apply to every use).
    ``permute``: before N:M masks, permute coupled channels so the masks keep more magnitude (the
    dense function is unchanged); ``permute_budget_s`` is the search time per channel group.
    ``export_onnx`` / ``validate``: export ONNX / check it with onnxruntime (booleans).
    ``opset``: ONNX opset (an int from ``MIN_OPSET`` to :func:`max_opset`), or None for the exporter's.
    ``method``: how N:M / unstructured masks are chosen: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``
    (calibrated: they need calibration data, ``compile(..., calibration=...)`` / ``--calib``); None:
    ``sparsegpt`` when calibration data are given, else ``magnitude``. ``calib_batch``: samples per batch
    when a calibration/evaluation FILE is batched. ``max_drift`` / ``min_cosine``: an accuracy budget (at
    most one): layers are left dense, most sensitive first, until the pruned model's mean cosine to the
    dense one on the evaluation data is >= 1 - max_drift (or >= min_cosine); both in (0, 1).
    ``dtype``: cast graphprune's copy (and the floating example inputs) to ``"float32"``, ``"float16"`` or
    ``"bfloat16"`` before anything runs (None: the model's own); the ONNX keeps that dtype.
    ``dynamic_batch``: axis 0 of every input (and output) is dynamic in the ONNX and the pt2 where the
    model allows; ``dynamic_axes``: more, ``{"input_ids": {1: "sequence"}}``; ``input_names``: names for
    the positional example inputs (default: the forward's parameter names).
    ``target``: ``"onnx"`` (the ONNX and the pt2) or ``"cuda"``: also the loadable 2:4 CUDA artifact (the
    folder ``cuda/``, loaded with ``graphprune.load(folder / "cuda", constructor, device="cuda")``), whose
    layers are decided by measurement on this machine's GPU in ``cuda_mode`` (``"graph"``: CUDA-graph
    replay, the mode the artifact runs in; ``"eager"``) and ``cuda_dtype`` (``"float16"`` /
    ``"bfloat16"``) at the example inputs' token count plus ``token_counts`` (e.g. ``(4,)`` for decode:
    each count is its own decision).

    Every field is type-checked here, so ``CompileConfig(...)``, ``from_dict``, ``--config`` JSON and
    ``compile(model, x, {...})`` accept and refuse the same values (ConfigError naming the field,
    the value and what is allowed).
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
    method: Literal["magnitude", "wanda", "sparsegpt"] | None = None
    calib_batch: int = 8
    max_drift: float | None = None
    min_cosine: float | None = None
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    dynamic_batch: bool = True
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    input_names: tuple[str, ...] | None = None
    target: Literal["onnx", "cuda"] = "onnx"
    cuda_dtype: Literal["float16", "bfloat16"] = "float16"
    cuda_mode: Literal["graph", "eager"] = "graph"
    token_counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _coerce_patterns(self.pattern))
        if not self.pattern:
            raise ConfigError("CompileConfig.pattern is empty; give at least one pattern, e.g. '2:4'")
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
            object.__setattr__(self, name, _coerce_strings(name, getattr(self, name)))
        for t in self.op_types:
            _check_choice("op_types", t, OP_TYPES, owner="CompileConfig")
        object.__setattr__(self, "overrides", _coerce_overrides(self.overrides))
        _check_choice("form", self.form, ("masked", "folded"), owner="CompileConfig")
        for name in ("prune_tied", "permute", "export_onnx", "validate"):
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise ConfigError(f"CompileConfig.{name} must be true or false (a bool), got {v!r} ({type(v).__name__})")
        b = self.permute_budget_s
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not (math.isfinite(b) and b >= 0):
            raise ConfigError(f"CompileConfig.permute_budget_s must be a number of seconds >= 0, got {b!r}")
        if self.opset is not None:
            o = self.opset
            if isinstance(o, bool) or not isinstance(o, int):
                raise ConfigError(f"CompileConfig.opset must be an int (an ONNX opset version) or null, got {o!r} ({type(o).__name__})")
            if not MIN_OPSET <= o <= max_opset():
                raise ConfigError(
                    f"CompileConfig.opset {o} is outside the supported range {MIN_OPSET}..{max_opset()} "
                    f"(the ONNX exporter implements opset {MIN_OPSET} and up; the installed onnx knows up to {max_opset()})"
                )

        if self.method is not None:
            _check_choice("method", self.method, METHODS, owner="CompileConfig")
        c = self.calib_batch
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ConfigError(f"CompileConfig.calib_batch must be an int >= 1 (samples per batch), got {c!r}")
        for name in ("max_drift", "min_cosine"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1):
                raise ConfigError(f"CompileConfig.{name} must be a number in (0, 1), got {v!r}")
        if self.max_drift is not None and self.min_cosine is not None:
            raise ConfigError("CompileConfig: give one accuracy budget, max_drift or min_cosine, not both")
        if self.dtype is not None:
            _check_choice("dtype", self.dtype, DTYPES, owner="CompileConfig")
        if not isinstance(self.dynamic_batch, bool):
            raise ConfigError(f"CompileConfig.dynamic_batch must be true or false, got {self.dynamic_batch!r}")
        object.__setattr__(self, "dynamic_axes", check_dynamic_axes(self.dynamic_axes, owner="CompileConfig"))
        if self.input_names is not None:
            names = (self.input_names,) if isinstance(self.input_names, str) else self.input_names
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
                raise ConfigError(f"CompileConfig.input_names must be a list of names, got {self.input_names!r}")
            object.__setattr__(self, "input_names", tuple(names))
        _check_choice("target", self.target, ("onnx", "cuda"), owner="CompileConfig")
        _check_choice("cuda_dtype", self.cuda_dtype, ("float16", "bfloat16"), owner="CompileConfig")
        _check_choice("cuda_mode", self.cuda_mode, ("graph", "eager"), owner="CompileConfig")
        if self.target == "cuda" and self.form == "masked":
            raise ConfigError("CompileConfig.target='cuda' ships the folded 2:4 form; form='masked' is for training (use one or the other)")
        counts = self.token_counts
        if isinstance(counts, int) and not isinstance(counts, bool):
            counts = (counts,)
        if not isinstance(counts, (list, tuple)) or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
            raise ConfigError(f"CompileConfig.token_counts must be a list of ints >= 1 (rows of a layer's input), got {self.token_counts!r}")
        object.__setattr__(self, "token_counts", tuple(counts))

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
        return Selector(self.include, self.exclude).selects(*names)

    def pattern_for(self, fqn: str) -> tuple[ElementPattern | None, str | None]:
        """The element-wise pattern for a site and the override glob that chose it (if any)."""
        chosen: tuple[ElementPattern | None, str | None] = (self.element_pattern, None)
        for glob, p in dict(self.overrides).items():
            if matches_any(fqn, (glob,)) and (p is None or isinstance(p, (Unstructured, SemiStructured))):
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
            "method": self.method,
            "calib_batch": self.calib_batch,
            "max_drift": self.max_drift,
            "min_cosine": self.min_cosine,
            "dtype": self.dtype,
            "dynamic_batch": self.dynamic_batch,
            "dynamic_axes": {k: {str(a): v for a, v in d.items()} for k, d in self.dynamic_axes.items()},
            "input_names": list(self.input_names) if self.input_names is not None else None,
            "target": self.target,
            "cuda_dtype": self.cuda_dtype,
            "cuda_mode": self.cuda_mode,
            "token_counts": list(self.token_counts),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompileConfig:
        """A config from a JSON-like dict (the fields of ``to_dict``; any subset)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a CompileConfig must be given as an object of fields, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = {str(k) for k in d} - known
        if unknown:
            raise ConfigError(
                f"unknown CompileConfig field(s) {sorted(unknown)}; known fields: {sorted(known)}"
            )
        return cls(**dict(d))

    @classmethod
    def from_json(cls, path: str | Path) -> CompileConfig:
        p = Path(path)
        try:
            if p.is_dir():
                raise ConfigError(f"config file {p} is a directory; give a JSON file")
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {p} is not text (binary data); give a JSON file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {p} is not valid JSON: {e}") from e
        except RecursionError:
            raise ConfigError(f"config file {p} nests too deeply to be a config") from None
        except OSError as e:
            raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a JSON object of CompileConfig fields, not {type(data).__name__}")
        return cls.from_dict(data)


def as_config(config: CompileConfig | Mapping[str, Any] | None) -> CompileConfig:
    """The config a public entry point was given: None (defaults), a CompileConfig, or a dict of its fields."""
    if config is None:
        return CompileConfig()
    if isinstance(config, CompileConfig):
        return config
    if isinstance(config, Mapping):
        return CompileConfig.from_dict(config)
    raise ConfigError(f"config must be a CompileConfig, a dict of its fields or None, got {type(config).__name__}")


_PATTERN_ALLOWED = "a pattern string such as '2:4', a pattern object, a dict with a 'type' field, or a list of these"


def _coerce_pattern_item(item: Any, *, where: str) -> tuple[Pattern, ...]:
    if isinstance(item, tuple(PATTERN_TYPES.values())):
        return (item,)  # type: ignore[return-value]
    if isinstance(item, str):
        return parse_pattern(item, _check=False)
    if isinstance(item, Mapping):
        return (pattern_from_dict(item),)
    raise ConfigError(f"{where}: {item!r} ({type(item).__name__}) is not a pattern; allowed: {_PATTERN_ALLOWED}")


def _coerce_patterns(value: Any) -> tuple[Pattern, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(p for item in value for p in _coerce_pattern_item(item, where="CompileConfig.pattern"))
    return _coerce_pattern_item(value, where="CompileConfig.pattern")


def _coerce_strings(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(
        f"CompileConfig.{name} must be a string or a list of strings (fqn globs / op kinds), got {value!r} "
        f"({type(value).__name__})"
    )


def _coerce_overrides(value: Any) -> dict[str, ElementPattern | None]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"CompileConfig.overrides must be an object mapping fqn globs to patterns (or null/'dense'), "
            f"got {value!r} ({type(value).__name__})"
        )
    out: dict[str, ElementPattern | None] = {}
    for glob, ov in value.items():
        if not isinstance(glob, str):
            raise ConfigError(f"CompileConfig.overrides keys must be fqn glob strings, got {glob!r}")
        if ov is None or (isinstance(ov, str) and ov.strip().lower() in ("dense", "none")):
            out[glob] = None
            continue
        pats = _coerce_pattern_item(ov, where=f"CompileConfig.overrides[{glob!r}]")
        if len(pats) != 1 or not isinstance(pats[0], (Unstructured, SemiStructured)):
            raise ConfigError(
                f"CompileConfig.overrides[{glob!r}] must be one element-wise pattern (N:M or unstructured) or "
                f"null/'dense', got {ov!r}"
            )
        out[glob] = pats[0]
    return out


def pattern_to_dict(p: Pattern) -> dict[str, Any]:
    d = dataclasses.asdict(p)
    d["type"] = type(p).__name__
    return d


def pattern_from_dict(d: Mapping[str, Any]) -> Pattern:
    if not isinstance(d, Mapping) or "type" not in d:
        raise ConfigError(f"a pattern must be an object with a 'type' field ({', '.join(PATTERN_TYPES)}), got {d!r}")
    kw = dict(d)
    t = kw.pop("type")
    if not isinstance(t, str) or t not in PATTERN_TYPES:
        raise ConfigError(f"unknown pattern type {t!r}; known: {', '.join(PATTERN_TYPES)}")
    try:
        return PATTERN_TYPES[t](**kw)
    except TypeError as e:
        raise ConfigError(f"bad fields for pattern {t}: {e}") from e


# ---- pattern strings ----------------------------------------------------------------------------
# CLI head -> (class, the field written after the colon)
_HEADS: dict[str, tuple[type, str]] = {
    "unstructured": (Unstructured, "sparsity"),
    "channels": (Channels, "ratio"),
    "heads": (Heads, "ratio"),
    "ffn": (FFN, "ratio"),
    "hidden": (Hidden, "ratio"),
}

_PATTERN_HELP = (
    "use N:M (e.g. 2:4, 4:8), unstructured:S with S in [0, 1) (e.g. unstructured:0.8), "
    "channels:R, heads:R, ffn:R, hidden:R, or a comma-separated combination such as heads:0.25,ffn:0.5; "
    "options follow '@', e.g. unstructured:0.8@global, 2:4@2d_greedy, channels:0.5@l2@round_to=4"
)


def _choice_fields(cls: type) -> dict[str, tuple[str, ...]]:
    """Field name -> allowed values, for the Literal-typed fields of a pattern class."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: tuple(typing.get_args(hints[f.name]))
        for f in dataclasses.fields(cls)
        if typing.get_origin(hints[f.name]) is Literal
    }


def _number(x: float) -> str:
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def pattern_to_str(p: Pattern) -> str:
    """The pattern string of ``p`` (see the module docstring); ``parse_pattern`` reads it back."""
    main: tuple[str, ...]
    if isinstance(p, SemiStructured):
        text, main = f"{p.n}:{p.m}", ("n", "m")
    else:
        head = next(h for h, (cls, _) in _HEADS.items() if cls is type(p))
        field_name = _HEADS[head][1]
        text, main = f"{head}:{_number(getattr(p, field_name))}", (field_name,)
    choices = _choice_fields(type(p))
    for f in dataclasses.fields(p):
        value = getattr(p, f.name)
        if f.name in main or value == f.default:
            continue
        text += f"@{value}" if f.name in choices else f"@{f.name}={value}"
    return text


def _parse_options(cls: type, options: list[str], part: str) -> dict[str, Any]:
    choices = _choice_fields(cls)
    ints = {f.name for f in dataclasses.fields(cls) if f.name not in choices and f.type in ("int", int)}
    kw: dict[str, Any] = {}
    for opt in options:
        name, eq, value = opt.partition("=")
        name, value = name.strip(), value.strip()
        if not eq:
            owners = [n for n, allowed in choices.items() if name in allowed]
            if len(owners) != 1:
                known = sorted(v for allowed in choices.values() for v in allowed)
                raise ConfigError(f"pattern {part!r}: option {opt!r} is not one of {known} nor name=value; {_PATTERN_HELP}")
            name, value = owners[0], name
        elif name in ints:
            try:
                kw[name] = int(value)
            except ValueError:
                raise ConfigError(f"pattern {part!r}: option {name} must be an integer, got {value!r}") from None
            continue
        elif name not in choices:
            known = sorted([*choices, *ints])
            raise ConfigError(f"pattern {part!r}: {cls.__name__} has no option {name!r}; options: {known}")
        if name in kw:
            raise ConfigError(f"pattern {part!r}: option {name} is given twice")
        kw[name] = value
    return kw


def _parse_float(text: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"pattern {whole!r}: {text!r} is not a number; {_PATTERN_HELP}") from None
    if not math.isfinite(value):
        raise ConfigError(f"pattern {whole!r}: {text!r} is not a finite number; {_PATTERN_HELP}")
    return value


def _parse_part(part: str) -> Pattern:
    head, _, rest = part.partition(":")
    key = head.strip().lower()
    if not rest:
        raise ConfigError(f"pattern {part!r} is not understood; {_PATTERN_HELP}")
    value, *options = rest.split("@")
    if key.isdigit():
        m_text, _, method = value.partition("/")
        if not m_text.strip().isdigit():
            raise ConfigError(f"pattern {part!r} is not understood; {_PATTERN_HELP}")
        n, m = int(key), int(m_text)
        if not (0 < n < m):
            raise ConfigError(f"pattern {part!r}: N:M needs 0 < N < M (keep N of every M), e.g. 2:4 or 4:8")
        kw = _parse_options(SemiStructured, [method, *options] if method else options, part)
        return SemiStructured(n=n, m=m, **kw)
    if key not in _HEADS:
        raise ConfigError(f"pattern {part!r} is not understood; {_PATTERN_HELP}")
    cls, field_name = _HEADS[key]
    number = _parse_float(value, part)
    if not (0 <= number < 1):
        what = "unstructured sparsity must be in [0, 1) (the fraction of zeros)" if cls is Unstructured else "ratio must be in [0, 1) (the fraction removed)"
        raise ConfigError(f"pattern {part!r}: {what}, got {number:g}")
    return cls(**{field_name: number}, **_parse_options(cls, options, part))


def parse_pattern(text: str, *, _check: bool = True) -> tuple[Pattern, ...]:
    """Parse a pattern string such as ``"2:4"``, ``"unstructured:0.8@global"`` or ``"heads:0.25,ffn:0.5"``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"pattern must be a non-empty string; {_PATTERN_HELP}")
    out: list[Pattern] = []
    for part in (s.strip() for s in text.split(",")):
        if not part:
            raise ConfigError(f"pattern {text!r} has an empty part; {_PATTERN_HELP}")
        out.append(_parse_part(part))
    if _check:
        CompileConfig(pattern=tuple(out))  # validates combinations
    return tuple(out)
