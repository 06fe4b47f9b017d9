"""Pass ``convert-sparse-forms``: give sparse Linear layers a runtime form that is faster, where a
measurement says it is.

IR: an ``nn.Module`` whose sparse weights are folded (zeros in plain ``nn.Linear`` weights). The
pass mutates it in place (``modified`` says whether any layer changed).

Candidates (every ``nn.Linear`` selected by the include/exclude globs):

- **CPU, csr**: weight sparsity >= ``csr_threshold`` (0.85) → :class:`CSRLinear`, the weight held
  as a CSR tensor. Three call forms compute the same product and differ by up to 3× in speed
  (BENCHMARKING.md): ``linear`` = ``F.linear(x, W_csr, b)``, ``mm`` = ``torch.sparse.mm(W_csr,
  x.T).T + b``, ``addmm`` = ``torch.sparse.addmm(b[:, None], W_csr, x.T).T``. All are timed; the
  fastest ships.
- **CUDA, semi_structured**: a weight that is 2:4 along K (input features), fp16/bf16 →
  ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt / CUTLASS). fp32 weights follow
  ``fp32_policy``: ``"skip"`` (default: left dense, with the reason: the kernels are fp16/bf16, and
  running fp32 as TF32 would change numerics silently) or ``"fp16"`` / ``"bf16"`` (the layer casts
  its input, runs in that dtype and casts back; numerics follow that dtype's tolerance). A shape the
  kernel rejects (rows % 32 / cols % 64 for CUTLASS fp16, ...) stays dense with the kernel's message.

Pre-flight: the model runs once on the example inputs with forward hooks to record each candidate's
real input; each candidate is then timed dense vs sparse in alternating blocks
(:mod:`graphprune.runtime.microbench`) and converted only when ``dense_median / sparse_median >=
min_speedup`` (1.05: a win larger than the noise of a shared machine). The sparse output is checked
against the dense one on that input (``compare_outputs``, one tolerance policy) before anything is
replaced. Every Linear gets a :class:`LayerForm` record: its choice, the measured medians and ratio,
and the reason.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphprune.config import CompileConfig
from graphprune.errors import ConfigError
from graphprune.passes.base import PassContext, PassResult

log = logging.getLogger(__name__)

__all__ = [
    "CSR_FORMS",
    "CSRLinear",
    "CastSemiStructuredLinear",
    "LayerForm",
    "SparseFormsConfig",
    "SparseFormsReport",
    "apply_sparse_forms",
    "choose_form",
    "convert_sparse_forms",
    "csr_linear",
    "semi_structured_reject_reason",
]

CsrForm = Literal["linear", "mm", "addmm"]
CSR_FORMS: tuple[CsrForm, ...] = ("linear", "mm", "addmm")
_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True, kw_only=True)
class SparseFormsConfig:
    """Options of :func:`apply_sparse_forms` (see the module docstring)."""

    csr_threshold: float = 0.85
    csr_forms: tuple[str, ...] = CSR_FORMS
    fp32_policy: Literal["skip", "fp16", "bf16"] = "skip"
    min_speedup: float = 1.05
    measure: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    warmup: int = 2
    blocks: int = 7
    min_block_s: float = 0.01

    def __post_init__(self) -> None:
        t = self.csr_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
            raise ConfigError(f"SparseFormsConfig.csr_threshold must be in (0, 1) (a sparsity), got {t!r}")
        forms = tuple(self.csr_forms)
        object.__setattr__(self, "csr_forms", forms)
        bad = [f for f in forms if f not in CSR_FORMS]
        if bad or not forms:
            raise ConfigError(f"SparseFormsConfig.csr_forms must be a non-empty subset of {CSR_FORMS}, got {forms!r}")
        if self.fp32_policy not in ("skip", "fp16", "bf16"):
            raise ConfigError(f"SparseFormsConfig.fp32_policy must be 'skip', 'fp16' or 'bf16', got {self.fp32_policy!r}")
        if isinstance(self.min_speedup, bool) or not isinstance(self.min_speedup, (int, float)) or self.min_speedup <= 0:
            raise ConfigError(f"SparseFormsConfig.min_speedup must be a number > 0, got {self.min_speedup!r}")
        for name in ("include", "exclude"):
            v = getattr(self, name)
            object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))
        if self.blocks < 1 or self.warmup < 0 or self.min_block_s < 0:
            raise ConfigError("SparseFormsConfig: blocks must be >= 1, warmup >= 0 and min_block_s >= 0")

    def selects(self, name: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(name, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, g) for g in self.exclude)


@dataclass
class LayerForm:
    """The runtime form one Linear layer got, and why."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    device: str
    sparsity: float
    candidate: str | None  # "csr", "semi_structured" or None
    chosen: str  # "dense", "csr:<form>", "semi_structured", "semi_structured:fp16-cast", ...
    input_shape: tuple[int, ...] | None = None
    dense_ms: float | None = None  # median
    sparse_ms: float | None = None  # median of the best sparse form
    ratio: float | None = None  # dense_ms / sparse_ms (> 1: sparse faster)
    forms_ms: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        return d


@dataclass
class SparseFormsReport:
    layers: list[LayerForm] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def converted(self) -> list[LayerForm]:
        return [lf for lf in self.layers if lf.chosen != "dense"]

    def to_dict(self) -> dict[str, Any]:
        return {"options": self.options, "converted": len(self.converted), "layers": [lf.to_dict() for lf in self.layers]}

    def table(self) -> str:
        head = f"{'layer':<48} {'shape':<12} {'sparsity':>8} {'candidate':<16} {'chosen':<22} {'dense ms':>9} {'sparse ms':>9} {'ratio':>6}  reason"
        lines = [head, "-" * len(head)]
        for lf in self.layers:
            name = lf.name if len(lf.name) <= 48 else "…" + lf.name[-47:]
            shape = "x".join(map(str, lf.shape))

            def ms(v: float | None) -> str:
                return f"{v:.3f}" if v is not None else "-"

            ratio = f"{lf.ratio:.2f}" if lf.ratio is not None else "-"
            lines.append(
                f"{name:<48} {shape:<12} {lf.sparsity:>8.1%} {lf.candidate or '-':<16} {lf.chosen:<22} "
                f"{ms(lf.dense_ms):>9} {ms(lf.sparse_ms):>9} {ratio:>6}  {lf.reason}"
            )
        return "\n".join(lines)


# ---- kernels ------------------------------------------------------------------------------------
def csr_linear(x: Tensor, weight_csr: Tensor, bias: Tensor | None, form: str) -> Tensor:
    """``x @ W.T + b`` with a CSR ``W`` ``[out, in]`` in call form ``form`` (see the module docstring).

    The result is contiguous, like ``F.linear``'s dense result (the sparse kernels return transposed
    layouts; the copy is part of what the pre-flight measures)."""
    if form == "linear":  # the CSR kernel behind F.linear returns a transposed layout too
        return F.linear(x, weight_csr, bias).contiguous()
    out_features = weight_csr.shape[0]
    x2 = x.reshape(-1, x.shape[-1])
    if form == "addmm" and bias is not None:
        y = torch.sparse.addmm(bias.unsqueeze(1), weight_csr, x2.T).T
    else:
        y = torch.sparse.mm(weight_csr, x2.T).T
        if bias is not None:
            y = y + bias
    return y.contiguous().reshape(*x.shape[:-1], out_features)


class CSRLinear(nn.Module):
    """An inference-only Linear whose weight is a CSR tensor (buffer ``weight_csr``)."""

    weight_csr: Tensor
    bias: Tensor | None

    def __init__(self, weight: Tensor, bias: Tensor | None, form: str = "addmm") -> None:
        super().__init__()
        if form not in CSR_FORMS:
            raise ConfigError(f"CSRLinear form must be one of {CSR_FORMS}, got {form!r}")
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.form = form
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            csr = weight.detach().to_sparse_csr()
        self.register_buffer("weight_csr", csr)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return csr_linear(x, self.weight_csr, self.bias, self.form)

    def extra_repr(self) -> str:
        nnz = int(self.weight_csr._nnz())
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"form={self.form}, nnz={nnz} ({1 - nnz / max(1, self.in_features * self.out_features):.1%} sparse)"
        )


class CastSemiStructuredLinear(nn.Module):
    """fp32 Linear run as a 2:4 semi-structured product in ``dtype`` (fp32_policy 'fp16'/'bf16')."""

    bias: Tensor | None

    def __init__(self, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(weight.detach().to(dtype)), requires_grad=False)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.to(self.dtype), self.weight, self.bias).to(x.dtype)


def semi_structured_reject_reason(weight: Tensor) -> str | None:
    """Why ``to_sparse_semi_structured`` would not take ``weight`` (None when it may), checked
    against the constraints torch declares for the backend it will use."""
    from torch.sparse import SparseSemiStructuredTensor
    from torch.sparse.semi_structured import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    if weight.device.type != "cuda":
        return f"weight is on {weight.device}: semi-structured kernels run on CUDA (sm80+)"
    if weight.dim() != 2:
        return f"rank {weight.dim()}: semi-structured kernels take 2-D weights"
    use_cutlass = SparseSemiStructuredTensor._FORCE_CUTLASS or not torch.backends.cusparselt.is_available()
    cls = SparseSemiStructuredTensorCUTLASS if use_cutlass else SparseSemiStructuredTensorCUSPARSELT
    cons = cls._DTYPE_SHAPE_CONSTRAINTS.get(weight.dtype)
    if cons is None:
        return f"dtype {weight.dtype} is not supported by the {cls.BACKEND} backend"
    rows, cols = weight.shape
    r, c = cons.sparse_min_rows, cons.sparse_min_cols
    if rows < r or rows % r or cols < c or cols % c:
        return f"shape {rows}x{cols}: the {cls.BACKEND} kernel needs rows a multiple of {r} and cols a multiple of {c}"
    return None


# ---- the pass -------------------------------------------------------------------------------------
def _sparsity(w: Tensor) -> float:
    return float((w == 0).sum()) / max(1, w.numel())


def _is_nm(w: Tensor, n: int, m: int) -> bool:
    from graphprune.sparsity import check_nm

    return w.shape[1] % m == 0 and check_nm(w, n, m, axis=1).ok


def _candidate(
    name: str, lin: nn.Linear, opts: SparseFormsConfig, device_type: str | None = None
) -> tuple[LayerForm, list[tuple[str, Callable[[], nn.Module]]]]:
    """The record of one Linear and its sparse builders (empty when it stays dense). ``device_type``:
    the target (default: where the weight lives)."""
    w = lin.weight.detach()
    bias = lin.bias.detach() if lin.bias is not None else None
    rec = LayerForm(name, tuple(w.shape), str(w.dtype).removeprefix("torch."), str(w.device), _sparsity(w), None, "dense")
    if w.layout != torch.strided or not w.is_floating_point():
        rec.reason = f"weight layout {w.layout} / dtype {w.dtype} is not a dense floating weight"
        return rec, []
    device_type = device_type or w.device.type
    if device_type == "cuda":
        rec.candidate = "semi_structured"
        if not _is_nm(w, 2, 4):
            rec.reason = "weight is not 2:4 along its input features (converting would prune it)"
            return rec, []
        dtype = w.dtype
        suffix = ""
        if dtype == torch.float32:
            if opts.fp32_policy == "skip":
                rec.reason = (
                    "fp32 weight: the semi-structured kernels are fp16/bf16 (fp32 would run as TF32); "
                    "cast the model to fp16/bf16 or set fp32_policy='fp16'/'bf16'"
                )
                return rec, []
            dtype = torch.float16 if opts.fp32_policy == "fp16" else torch.bfloat16
            suffix = f":{opts.fp32_policy}-cast"
        elif dtype not in _HALF:
            rec.reason = f"dtype {dtype}: semi-structured kernels take fp16/bf16"
            return rec, []
        why = semi_structured_reject_reason(w.to(dtype))
        if why:
            rec.reason = why
            return rec, []

        def build() -> nn.Module:
            if suffix:
                return CastSemiStructuredLinear(w, bias, dtype)
            new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
            new.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(w.contiguous()), requires_grad=False)
            if bias is not None:
                new.bias = nn.Parameter(bias.clone(), requires_grad=False)
            return new

        return rec, [(f"semi_structured{suffix}", build)]
    if device_type != "cpu":
        rec.reason = f"no sparse form for device {device_type}"
        return rec, []
    rec.candidate = "csr"
    if rec.sparsity < opts.csr_threshold:
        rec.reason = f"sparsity {rec.sparsity:.1%} below the CSR threshold {opts.csr_threshold:.0%}"
        return rec, []
    if w.dtype not in (torch.float32, torch.float64):
        rec.reason = f"dtype {w.dtype}: CPU CSR kernels are fp32/fp64"
        return rec, []
    builders: list[tuple[str, Callable[[], nn.Module]]] = [
        (f"csr:{form}", functools.partial(CSRLinear, w, bias, form)) for form in opts.csr_forms
    ]
    return rec, builders


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def choose_form(name: str, lin: nn.Linear, x: Tensor | None, options: SparseFormsConfig | None = None) -> tuple[LayerForm, nn.Module | None]:
    """Decide the form of one Linear given its real input ``x`` (None: the layer did not run).

    Returns the record and the sparse module to install (None: keep the dense layer). Nothing is
    mutated. The sparse output is checked against the dense one on ``x`` before it is timed.
    """
    from graphprune.runtime.compare import compare_outputs
    from graphprune.runtime.microbench import speedup, time_alternating

    opts = options or SparseFormsConfig()
    rec, builders = _candidate(name, lin, opts)
    if not builders:
        return rec, None
    if x is None:
        rec.reason = "the layer did not run on the example inputs"
        return rec, None
    rec.input_shape = tuple(x.shape)
    with torch.no_grad():
        ref = lin(x)
    built: dict[str, nn.Module] = {}
    failures: list[str] = []
    for label, build in builders:
        try:
            mod = build()
            with torch.no_grad():
                out = mod(x)
        except Exception as e:  # the kernel rejected this shape / dtype: stays dense with the reason
            failures.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            continue
        cast = "float16" if ":fp16-cast" in label else ("bfloat16" if ":bf16-cast" in label else None)
        stats = compare_outputs(ref, out, dtype=cast)
        if not stats.ok:
            failures.append(f"{label}: output differs from dense ({stats.summary()})")
            continue
        built[label] = mod
    if not built:
        rec.reason = "; ".join(failures) or "no sparse form could be built"
        return rec, None
    chosen: nn.Module | None = None
    if not opts.measure:
        label = next(iter(built))
        rec.chosen = label
        rec.reason = "converted without measuring (measure=False)"
        chosen = built[label]
    else:
        fns: dict[str, Callable[[], Any]] = {"dense": lambda: lin(x)}
        for label, mod in built.items():
            fns[label] = functools.partial(mod, x)
        timings = time_alternating(fns, warmup=opts.warmup, blocks=opts.blocks, min_block_s=opts.min_block_s, sync=x.is_cuda)
        rec.forms_ms = {k: t.median_ms for k, t in timings.items()}
        best = min(built, key=lambda k: timings[k].median_ms)
        rec.dense_ms, rec.sparse_ms = timings["dense"].median_ms, timings[best].median_ms
        rec.ratio = speedup(timings["dense"], timings[best])
        if rec.ratio >= opts.min_speedup:
            rec.chosen = best
            rec.reason = f"{best} is {rec.ratio:.2f}x faster than dense at input {list(rec.input_shape)}"
            chosen = built[best]
        else:
            rec.reason = (
                f"best sparse form {best} measured {rec.ratio:.2f}x dense at input {list(rec.input_shape)} "
                f"(needs >= {opts.min_speedup:.2f}x): kept dense"
            )
    if failures:
        rec.reason += "; failed forms: " + "; ".join(failures)
    return rec, chosen


def apply_sparse_forms(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    options: SparseFormsConfig | None = None,
    *,
    example_kwargs: dict[str, Any] | None = None,
) -> SparseFormsReport:
    """Replace the Linear layers of ``model`` (in place) by a sparse form where it measures faster.

    Returns one :class:`LayerForm` per ``nn.Linear``. With ``options.measure=False`` every eligible
    layer is converted to its first sparse form without timing (for tests and for callers that
    measured elsewhere). The model should be in eval mode; the sparse forms are inference-only.
    """
    from graphprune.runtime.microbench import record_layer_inputs

    opts = options or SparseFormsConfig()
    report = SparseFormsReport(options=dict(asdict(opts)))
    linears = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear and n and opts.selects(n)]
    eligible = [n for n, lin in linears if _candidate(n, lin, opts)[1]]
    inputs = record_layer_inputs(model, tuple(example_inputs), eligible, example_kwargs=example_kwargs) if eligible else {}
    replace: list[tuple[str, nn.Module]] = []
    for name, lin in linears:
        x = None
        if name in inputs:
            args, kwargs = inputs[name]
            x = args[0] if args else next(iter(kwargs.values()), None)
        rec, mod = choose_form(name, lin, x, opts)
        report.layers.append(rec)
        if mod is not None:
            replace.append((name, mod))
    for name, mod in replace:
        _set_submodule(model, name, mod)
        log.info("%s -> %s", name, type(mod).__name__)
    return report


def convert_sparse_forms(
    module: nn.Module, config: CompileConfig, ctx: PassContext, *, options: SparseFormsConfig | None = None
) -> PassResult:
    """The pass: :func:`apply_sparse_forms` on ``module`` with ``ctx.example_inputs``; mutates ``module``."""
    report = apply_sparse_forms(module, ctx.example_inputs, options)
    return PassResult(module, modified=bool(report.converted), report=report)
