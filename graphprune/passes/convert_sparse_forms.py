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

  The CUDA form is :class:`~graphprune.runtime.semi_cuda.SemiSparseLinear` (the weight packed once
  by cuSPARSELt, ``torch._cslt_sparse_mm`` per call, no tensor-subclass dispatch).

Pre-flight: the model runs once on the example inputs with forward hooks to record each candidate's
real input; each candidate is then timed dense vs sparse in alternating blocks
(:mod:`graphprune.runtime.microbench`) and converted only when ``dense_median / sparse_median >=
max(1, min_speedup)`` (1.05 by default: a win larger than the noise of a shared machine; never a
form slower than dense in its own timing). The sparse output is checked against the dense one on
that input (``compare_outputs``, one tolerance policy) before anything is replaced. Every Linear gets
a :class:`LayerForm` record: its choice, the measured medians and ratio, and the reason.

2:4 on CUDA is decided **per token count, in the execution mode that will run** (``mode``:
``"eager"``, or ``"graph"`` for a model replayed from CUDA graphs, where each candidate is timed as
graph replays; on an H100 the mode decides the result). The token counts are the layer's real
input (rows of its 2-D view, e.g. 4 × 1024 = 4096 for a prefill) plus ``token_counts`` (e.g. 4 for a
batch-4 decode step, timed on random inputs of that many rows). Each count gets a route (sparse
with the fastest algorithm id, or dense) and a record in ``LayerForm.shapes`` (tokens, medians, ratio,
algorithm, choice). The layer becomes a ``SemiSparseLinear`` when any count chose sparse; it keeps a
dense copy of the weight only when some count chose dense. Kernel configurations: algorithm 0 (the
``to_sparse_semi_structured`` call) and, per output layout, the algorithm cuSPARSELt's search returns
(:mod:`graphprune.runtime.semi_cuda.kernels`) are timed in the same blocks and the fastest whose
numbers match dense is kept; the choice per (shape, dtype) is
cached in an :class:`~graphprune.runtime.semi_cuda.AlgCache` (``alg_cache``: a JSON file, read and
updated). Layers of the same shape share one timing per token count (``share_shape_timings``; the
numbers check still runs per layer), so a 22-layer decoder times each distinct shape once.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphprune.errors import ConfigError
from graphprune.passes.base import PassContext, PassResult, register_pass
from graphprune.selector import Selector

log = logging.getLogger(__name__)

__all__ = [
    "CSR_FORMS",
    "CSRLinear",
    "CastSemiStructuredLinear",
    "LayerForm",
    "PreflightMemo",
    "SparseFormsConfig",
    "SparseFormsReport",
    "apply_sparse_forms",
    "build_semi_structured_artifact",
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
    mode: Literal["eager", "graph"] = "eager"
    token_counts: tuple[int, ...] = ()
    alg_search: bool = True
    alg_cache: str | None = None
    share_shape_timings: bool = True
    target: Literal["cpu", "cuda"] | None = None
    semi_kernel: str = "cusparselt"

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
        if self.mode not in ("eager", "graph"):
            raise ConfigError(f"SparseFormsConfig.mode must be 'eager' or 'graph' (CUDA-graph replay), got {self.mode!r}")
        counts = (self.token_counts,) if isinstance(self.token_counts, int) else tuple(self.token_counts)
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in counts):
            raise ConfigError(f"SparseFormsConfig.token_counts must be ints >= 1 (rows of a layer's input), got {self.token_counts!r}")
        object.__setattr__(self, "token_counts", tuple(dict.fromkeys(counts)))
        if self.target not in (None, "cpu", "cuda"):
            raise ConfigError(f"SparseFormsConfig.target must be None (where the weights live), 'cpu' or 'cuda', got {self.target!r}")
        from graphprune.runtime.semi_cuda.kernels import KERNELS

        if self.semi_kernel not in KERNELS:
            raise ConfigError(f"SparseFormsConfig.semi_kernel must be one of {sorted(KERNELS)}, got {self.semi_kernel!r}")

    def selects(self, name: str) -> bool:
        return Selector(self.include, self.exclude).selects(name)


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
    mode: str = "eager"  # execution mode the timings were taken in
    shapes: list[dict[str, Any]] = field(default_factory=list)  # per token count (semi-structured)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        return d


@dataclass
class SparseFormsReport:
    layers: list[LayerForm] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    alg_cache: Any = field(default=None, repr=False, compare=False)  # the pre-flight's AlgCache (not in to_dict)

    @property
    def converted(self) -> list[LayerForm]:
        return [lf for lf in self.layers if lf.chosen != "dense"]

    def to_dict(self) -> dict[str, Any]:
        return {"options": self.options, "converted": len(self.converted), "notes": self.notes, "layers": [lf.to_dict() for lf in self.layers]}

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
    device_type = device_type or opts.target or w.device.type
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
        why = None if opts.semi_kernel == "reference" else semi_structured_reject_reason(w.to(dtype))
        if why:
            rec.reason = why
            return rec, []

        def build() -> nn.Module:
            if suffix:
                return CastSemiStructuredLinear(w, bias, dtype)
            from graphprune.runtime.semi_cuda.linear import SemiSparseLinear

            return SemiSparseLinear(w, bias, kernel=opts.semi_kernel)

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


class PreflightMemo:
    """What one pre-flight shares across layers: the algorithm cache and, per problem
    ``(out, in, tokens, dtype, bias, mode)``, the timing taken for the first layer of that shape."""

    def __init__(self, opts: SparseFormsConfig) -> None:
        from graphprune.runtime.semi_cuda.algs import AlgCache

        self.notes: list[str] = []
        self.timings: dict[tuple[Any, ...], dict[str, Any]] = {}
        env = None if opts.semi_kernel != "reference" else {"gpu": "none", "reference": "reference", "torch": torch.__version__}
        if opts.alg_cache:
            self.algs = AlgCache.load(opts.alg_cache, env)
            if self.algs.stale:
                self.notes.append(f"algorithm cache {opts.alg_cache}: {self.algs.stale}")
        else:
            self.algs = AlgCache(None, env)

    def save(self) -> None:
        if self.algs.path is not None and self.algs.dirty:
            self.algs.save()


def choose_form(
    name: str, lin: nn.Linear, x: Tensor | None, options: SparseFormsConfig | None = None, *, memo: PreflightMemo | None = None
) -> tuple[LayerForm, nn.Module | None]:
    """Decide the form of one Linear given its real input ``x`` (None: the layer did not run).

    Returns the record and the sparse module to install (None: keep the dense layer). Nothing is
    mutated. The sparse output is checked against the dense one on ``x`` before it is timed.
    ``memo``: shared by the layers of one pre-flight (algorithm cache, timings per shape).
    """
    from graphprune.runtime.compare import compare_outputs
    from graphprune.runtime.microbench import speedup, time_alternating
    from graphprune.runtime.semi_cuda.linear import SemiSparseLinear

    opts = options or SparseFormsConfig()
    rec, builders = _candidate(name, lin, opts)
    rec.mode = opts.mode
    if not builders:
        return rec, None
    if x is None:
        rec.reason = "the layer did not run on the example inputs"
        return rec, None
    rec.input_shape = tuple(x.shape)
    if len(builders) == 1 and builders[0][0] == "semi_structured":
        label, build = builders[0]
        try:
            mod = build()
        except Exception as e:  # the kernel rejected this weight: stays dense with the reason
            rec.reason = f"{label}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            return rec, None
        if not isinstance(mod, SemiSparseLinear):
            raise TypeError(f"the semi_structured builder made a {type(mod).__name__}")
        return _choose_semi(rec, lin, mod, x, opts, memo or PreflightMemo(opts))
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
        mode = opts.mode if x.is_cuda else "eager"  # CPU forms run eagerly
        rec.mode = mode
        timings = time_alternating(fns, warmup=opts.warmup, blocks=opts.blocks, min_block_s=opts.min_block_s, sync=x.is_cuda, mode=mode)
        rec.forms_ms = {k: t.median_ms for k, t in timings.items()}
        best = min(built, key=lambda k: timings[k].median_ms)
        rec.dense_ms, rec.sparse_ms = timings["dense"].median_ms, timings[best].median_ms
        rec.ratio = speedup(timings["dense"], timings[best])
        if rec.ratio >= max(1.0, opts.min_speedup):
            rec.chosen = best
            rec.reason = f"{best} is {rec.ratio:.2f}x faster than dense at input {list(rec.input_shape)}"
            chosen = built[best]
        else:
            rec.reason = (
                f"best sparse form {best} measured {rec.ratio:.2f}x dense at input {list(rec.input_shape)} "
                f"(needs >= {max(1.0, opts.min_speedup):.2f}x): kept dense"
            )
    if failures:
        rec.reason += "; failed forms: " + "; ".join(failures)
    return rec, chosen


_CHECK_ROWS = 256


def _problem_input(x: Tensor, tokens: int, k: int) -> Tensor:
    """The real 2-D input when it has ``tokens`` rows, else a seeded random one of that many rows."""
    x2 = x.reshape(-1, k)
    if x2.shape[0] == tokens:
        return x2
    gen = torch.Generator(device=x.device).manual_seed(tokens)
    return torch.randn(tokens, k, generator=gen, device=x.device, dtype=torch.float32).to(x.dtype)


def _choose_semi(rec: LayerForm, lin: nn.Linear, mod: Any, x: Tensor, opts: SparseFormsConfig, memo: PreflightMemo) -> tuple[LayerForm, nn.Module | None]:
    """The 2:4 CUDA decision: one route per token count, timed in ``opts.mode`` (module docstring)."""
    from graphprune.runtime.compare import compare_outputs
    from graphprune.runtime.microbench import speedup, time_alternating
    from graphprune.runtime.semi_cuda.algs import AlgEntry, alg_key
    from graphprune.runtime.semi_cuda.linear import Route

    n, k = mod.out_features, mod.in_features
    dtype = str(mod.dtype).removeprefix("torch.")
    has_bias = mod.bias is not None
    real_tokens = x.numel() // k
    counts = [real_tokens] + [t for t in opts.token_counts if t != real_tokens]
    label = "semi_structured"
    if not opts.measure:
        rec.chosen = label
        rec.reason = "converted without measuring (measure=False)"
        return rec, mod
    with torch.no_grad():
        ref = lin(x).reshape(-1, n)
    # the one tolerance policy on _CHECK_ROWS rows spread over the output (every row when fewer), and
    # every element finite: a full comparison of each layer's output on the host would dominate the pre-flight
    rows = torch.linspace(0, ref.shape[0] - 1, min(ref.shape[0], _CHECK_ROWS), device=ref.device).round().long().unique()
    routes: dict[int, Any] = {}
    failures: list[str] = []
    verified: set[tuple[int, bool]] = set()

    def cfg_label(alg: int, transpose: bool) -> str:
        return f"alg{alg}{'t' if transpose else ''}"

    def numbers_ok(alg: int, transpose: bool) -> bool:
        if (alg, transpose) in verified:
            return True
        name = cfg_label(alg, transpose)
        try:
            with torch.no_grad():
                out = mod.sparse_mm(x, alg, transpose).reshape(-1, n)
        except Exception as e:
            failures.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
            return False
        if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(ref).all()):
            failures.append(f"{name}: non-finite output where dense is finite")
            return False
        stats = compare_outputs(ref[rows], out[rows])
        if not stats.ok:
            failures.append(f"{name}: output differs from dense ({stats.summary()})")
            return False
        verified.add((alg, transpose))
        return True

    if not numbers_ok(0, False):
        rec.reason = "; ".join(failures)
        return rec, None
    min_ratio = max(1.0, opts.min_speedup)
    for tokens in counts:
        problem = (n, k, tokens, dtype, has_bias, opts.mode)
        shared = memo.timings.get(problem) if opts.share_shape_timings else None
        if shared is not None and numbers_ok(int(shared["alg_id"]), bool(shared["transpose"])):
            shape = {**shared, "shared_with": shared["layer"]}
        else:
            xt = _problem_input(x, tokens, k)
            key = alg_key(n, k, tokens, mod.dtype, has_bias)
            cached = memo.algs.get(key)
            # configurations: algorithm 0 untransposed (what to_sparse_semi_structured runs), then the
            # searched algorithm of each layout (kernels.py says which searches are skipped)
            cfgs: list[tuple[int, bool]] = [(0, False)]
            if cached is not None:
                cfgs.append((cached.alg_id, cached.transpose))
            elif opts.alg_search:
                for transpose in (False, True):
                    try:
                        found = mod._kernel.search(mod.packed, xt, mod.bias, transpose)
                    except Exception as e:  # the search is an optimisation: alg 0 still runs
                        memo.notes.append(f"{rec.name}: algorithm search failed for {key} transpose={transpose} ({type(e).__name__}: {str(e)[:120]})")
                        continue
                    if found is not None:
                        cfgs.append((int(found), transpose))
            cfgs = list(dict.fromkeys(cfgs))
            fns: dict[str, Callable[[], Any]] = {"dense": functools.partial(lin, xt)}
            for a, tr in cfgs:
                fns[cfg_label(a, tr)] = functools.partial(mod.sparse_mm, xt, a, tr)
            t = time_alternating(fns, warmup=opts.warmup, blocks=opts.blocks, min_block_s=opts.min_block_s, sync=xt.is_cuda, mode=opts.mode)
            ranked = sorted(cfgs, key=lambda c: t[cfg_label(*c)].median_ms)
            best = next((c for c in ranked if numbers_ok(*c)), (0, False))  # (0, False) was verified above
            best_name = cfg_label(*best)
            if cached is None:
                memo.algs.put(key, AlgEntry(best[0], t[best_name].median_ms, t["alg0"].median_ms,
                                            {cfg_label(*c): t[cfg_label(*c)].median_ms for c in cfgs}, transpose=best[1]))
            ratio = speedup(t["dense"], t[best_name])
            shape = {
                "tokens": tokens,
                "input_shape": list(x.shape) if tokens == real_tokens else [tokens, k],
                "mode": opts.mode,
                "dense_ms": t["dense"].median_ms,
                "sparse_ms": t[best_name].median_ms,
                "ratio": ratio,
                "alg_id": best[0],
                "transpose": best[1],
                "configs": [cfg_label(*c) for c in cfgs],
                "forms_ms": {name: v.median_ms for name, v in t.items()},
                "chosen": label if ratio >= min_ratio else "dense",
                "layer": rec.name,
            }
            memo.timings[problem] = shape
        rec.shapes.append({kk: v for kk, v in shape.items() if kk != "layer"})
        if shape["chosen"] == label:
            routes[tokens] = Route("sparse", int(shape["alg_id"]), float(shape["ratio"]), bool(shape["transpose"]))
        else:
            routes[tokens] = Route("dense", 0, float(shape["ratio"]))
    first = rec.shapes[0]
    rec.dense_ms, rec.sparse_ms, rec.ratio = first["dense_ms"], first["sparse_ms"], first["ratio"]
    rec.forms_ms = dict(first["forms_ms"])
    parts = [
        f"{s['tokens']} tokens: {s['ratio']:.2f}x -> "
        + (f"sparse (alg {s['alg_id']}{', transposed' if s['transpose'] else ''})" if s["chosen"] == label else "dense")
        + (f" [timing shared with {s['shared_with']}]" if "shared_with" in s else "")
        for s in rec.shapes
    ]
    summary = f"{opts.mode} mode, needs >= {min_ratio:.2f}x: " + "; ".join(parts)
    if failures:
        summary += "; failed: " + "; ".join(failures)
    if not any(r.form == "sparse" for r in routes.values()):
        rec.reason = "kept dense: " + summary
        return rec, None
    rec.chosen = label
    rec.reason = summary
    return rec, mod.with_routes(routes)


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
    memo = PreflightMemo(opts)
    linears = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear and n and opts.selects(n)]
    eligible = [n for n, lin in linears if _candidate(n, lin, opts)[1]]
    inputs = record_layer_inputs(model, tuple(example_inputs), eligible, example_kwargs=example_kwargs) if eligible else {}
    replace: list[tuple[str, nn.Module]] = []
    for name, lin in linears:
        x = None
        if name in inputs:
            args, kwargs = inputs[name]
            x = args[0] if args else next(iter(kwargs.values()), None)
        rec, mod = choose_form(name, lin, x, opts, memo=memo)
        report.layers.append(rec)
        if mod is not None:
            replace.append((name, mod))
    memo.save()
    report.notes.extend(memo.notes)
    report.alg_cache = memo.algs
    for name, mod in replace:
        _set_submodule(model, name, mod)
        log.info("%s -> %s", name, type(mod).__name__)
    return report


def build_semi_structured_artifact(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    out_dir: str | Path,
    options: SparseFormsConfig | None = None,
    *,
    example_kwargs: dict[str, Any] | None = None,
) -> SparseFormsReport:
    """Pre-flight ``model`` (a folded 2:4 model on CUDA, fp16/bf16, eval mode) and write the fast
    artifact into ``out_dir`` (:func:`graphprune.runtime.semi_cuda.save_semi_structured`).

    ``options`` default to ``SparseFormsConfig(mode="graph")``: the routes are decided by CUDA-graph
    replay timings, the mode :func:`graphprune.runtime.semi_cuda.load_semi_structured` runs in. The
    model is converted in place. Raises InputError when no layer measured faster as 2:4 (nothing to
    ship); the report says why per layer.
    """
    from graphprune.runtime.semi_cuda.artifact import save_semi_structured

    opts = options or SparseFormsConfig(mode="graph")
    report = apply_sparse_forms(model, example_inputs, opts, example_kwargs=example_kwargs)
    if not any(lf.chosen == "semi_structured" for lf in report.layers):
        from graphprune.errors import InputError

        raise InputError(
            f"no Linear layer of {type(model).__name__} measured faster as 2:4 in {opts.mode} mode "
            f"({len(report.layers)} checked): no artifact written; see the pre-flight report"
        )
    save_semi_structured(model, out_dir, report=report, alg_cache=report.alg_cache, mode=opts.mode)
    return report


@register_pass("convert-sparse-forms", mutates=("structure",), options=SparseFormsConfig)
def convert_sparse_forms(module: nn.Module, options: SparseFormsConfig, ctx: PassContext) -> PassResult:
    """Give sparse Linear layers the runtime form measured faster (CSR on CPU, 2:4 on CUDA); mutates ``module``."""
    report = apply_sparse_forms(module, ctx.example_inputs, options)
    return PassResult(module, modified=bool(report.converted), report=report)
