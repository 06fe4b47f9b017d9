"""``torch.compile(model, backend="graphprune")``: the sparse pipeline as a Dynamo backend.

Registered through the ``torch_dynamo_backends`` entry point declared in pyproject.toml
(``graphprune = "graphprune.backend:graphprune_backend"``), so Dynamo finds it by name once the
package is installed; :func:`register` registers it explicitly where entry points are unavailable.

IR: the ``torch.fx.GraphModule`` Dynamo hands a backend (torch-level ops; with inlined nn modules,
parameters arrive as placeholders whose example inputs are the real ``nn.Parameter`` objects).

What it does, in order:

1. **Prune** (only with ``options={"pattern": "2:4"}`` or another element-wise pattern string):
   every weight :func:`graphprune.analysis.find_sites.find_sites` finds in the Dynamo graph (the
   same registry ``graphprune.compile`` uses: Linear, Conv, HF Conv1D via ``addmm``, ``x @ W``, ...)
   and that no other op reads gets a mask from :func:`graphprune.sparsity.compute_mask` along its
   own reduction axis K. With grad mode off at compile
   time the pruned weight is snapshotted into the graph as a constant (inference; the user's
   parameters are never modified); with grad mode on the graph multiplies the live parameter by a
   constant mask (the masked form: gradients reach the parameter, masked). Weights with K not a
   multiple of M, or read by other ops too, stay dense and the report says why.
2. **Accelerate** (default on, grad mode off only): each ``linear`` with a constant weight is given
   the form :func:`graphprune.passes.fx.convert_sparse_forms.choose_form` picks by measurement at
   the node's real input shape (CSR on CPU above the sparsity threshold; 2:4 on CUDA, fp16/bf16,
   as :class:`graphprune.runtime.semi_cuda.SemiSparseLinear`: the same runtime, algorithm cache and
   per-shape decision as ``graphprune.compile``'s CUDA artifact). A converted node becomes a call to
   the opaque custom op ``graphprune::sparse_linear(x, handle)`` whose kernel lives on the graph
   module, so inductor treats it as an extern call. Numerics are unchanged (checked per layer by
   ``choose_form``). Layers of one shape share one timing.
3. **Inductor** (``options["inductor"]``, default True): the rewritten graph goes to
   ``torch._inductor.compile_fx.compile_fx``; if inductor fails (e.g. no C++ compiler on a CPU
   machine) the rewritten graph runs eagerly and the reason is logged and reported.

**CUDA graphs** (``options["cudagraphs"]``: None = automatic, True, False). Each eager cuSPARSELt
call costs ~0.5 ms of host set-up on an H100, so 2:4 only pays off when the compiled graph is
replayed from a CUDA graph. Automatic: on CUDA inputs the pre-flight times dense vs 2:4 as graph
replays, and when any layer was converted (or ``mode="reduce-overhead"`` was asked) inductor
compiles with ``triton.cudagraphs`` on, exactly as ``torch.compile(mode="reduce-overhead")`` does;
with none converted the graph compiles as plain inductor. ``cudagraphs=False`` times and runs eagerly.

Every compiled graph appends a :class:`BackendReport` to :data:`REPORTS` (the last 32);
:func:`last_report` returns the newest.

Options (``torch.compile(..., options={...})``): ``pattern`` (str or pattern object, default None),
``accelerate`` (bool, True), ``inductor`` (bool, True), ``measure`` (bool, True), ``csr_threshold``
(0.85), ``min_speedup`` (1.05), ``fp32_policy`` ("skip" | "fp16" | "bf16"), ``cudagraphs`` (None |
bool), ``alg_cache`` (path of the JSON algorithm cache to read and update; default in memory).

Weights are read when the graph is compiled: pruned constants and sparse forms are snapshots
(Dynamo does not guard on parameter values), so recompile (``torch._dynamo.reset()``) after changing
weights. Sparse forms are applied only to graphs compiled with grad mode off (inference).
"""

from __future__ import annotations

import collections
import copy
import itertools
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from graphprune.config import SemiStructured, Unstructured, parse_pattern
from graphprune.errors import ConfigError
from graphprune.passes.fx.backend_prune import _bias_arg, _prune, _readable, _static_value, _static_weights, _weight_arg

log = logging.getLogger(__name__)

__all__ = ["REPORTS", "BackendOptions", "BackendReport", "graphprune_backend", "last_report", "register"]

_LINEAR_TARGETS: set[Any] = {torch._C._nn.linear, F.linear}
_OPTION_KEYS = ("pattern", "accelerate", "inductor", "measure", "csr_threshold", "min_speedup", "fp32_policy", "cudagraphs", "alg_cache")


@dataclass(frozen=True, kw_only=True)
class BackendOptions:
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
        unknown = sorted(set(opts) - set(_OPTION_KEYS))
        if unknown:
            raise ConfigError(f"unknown graphprune backend option(s) {unknown}; known: {list(_OPTION_KEYS)}")
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
        from graphprune.passes.fx.convert_sparse_forms import SparseFormsConfig

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

    pruned: list[dict[str, Any]] = field(default_factory=list)  # {weight, pattern, kept_magnitude}
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {weight, reason}
    forms: list[dict[str, Any]] = field(default_factory=list)  # LayerForm records
    compiler: str = ""  # "inductor" or "eager (...reason...)"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


REPORTS: collections.deque[BackendReport] = collections.deque(maxlen=32)


def last_report() -> BackendReport | None:
    """The report of the graph compiled most recently (None before any)."""
    return REPORTS[-1] if REPORTS else None


# ---- the opaque sparse-linear op -------------------------------------------------------------------
_KERNELS: weakref.WeakValueDictionary[int, nn.Module] = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)
_OP_LOCK = threading.Lock()
_OP: Any = None


def _sparse_linear_op() -> Any:
    """``torch.ops.graphprune.sparse_linear`` (defined on first use)."""
    global _OP
    with _OP_LOCK:
        if _OP is None:
            if not hasattr(torch.ops.graphprune, "sparse_linear"):

                @torch.library.custom_op("graphprune::sparse_linear", mutates_args=())
                def sparse_linear(x: Tensor, handle: int) -> Tensor:
                    kernel = _KERNELS.get(handle)
                    if kernel is None:
                        raise RuntimeError(f"graphprune sparse_linear kernel {handle} no longer exists (its graph was freed)")
                    return kernel(x).contiguous()

                @sparse_linear.register_fake
                def _(x: Tensor, handle: int) -> Tensor:
                    kernel = _KERNELS[handle]
                    return x.new_empty((*x.shape[:-1], cast(int, kernel.out_features)))

            _OP = torch.ops.graphprune.sparse_linear.default
    return _OP


def _accelerate(
    gm: fx.GraphModule, values: dict[fx.Node, Tensor], opts: BackendOptions, report: BackendReport, kernels: list[nn.Module], mode: str = "eager"
) -> None:
    from graphprune.passes.fx.convert_sparse_forms import PreflightMemo, choose_form

    forms_cfg = opts.forms_config(mode)
    memo = PreflightMemo(forms_cfg)
    op = None
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _LINEAR_TARGETS:
            continue
        w_node, b_node = _weight_arg(node), _bias_arg(node)
        w = _static_value(w_node, values)
        if w is None:
            continue
        name = _readable(w_node) if isinstance(w_node, fx.Node) else node.name
        b = None
        if b_node is not None:
            b = _static_value(b_node, values)
            if b is None:
                report.forms.append({"name": name, "chosen": "dense", "reason": "bias is computed in the graph, not a constant"})
                continue
        x_node = node.args[0] if node.args else node.kwargs.get("input")
        fake = x_node.meta.get("example_value") if isinstance(x_node, fx.Node) else None
        if not isinstance(fake, Tensor) or any(not isinstance(s, int) for s in fake.shape):
            report.forms.append({"name": name, "chosen": "dense", "reason": "input shape unknown or dynamic at compile time"})
            continue
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        lin.weight = nn.Parameter(w.detach(), requires_grad=False)
        if b is not None:
            lin.bias = nn.Parameter(b.detach(), requires_grad=False)
        gen = torch.Generator(device=w.device).manual_seed(0)
        x = torch.randn(tuple(fake.shape), generator=gen, device=w.device, dtype=torch.float32).to(fake.dtype)
        rec, mod = choose_form(name, lin, x, forms_cfg, memo=memo)
        report.forms.append(rec.to_dict())
        if mod is None:
            continue
        op = op or _sparse_linear_op()
        handle = next(_HANDLES)
        _KERNELS[handle] = mod
        kernels.append(mod)  # kept alive by the compiled callable, not registered on gm (nothing to lift)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_function(op, (x_node, handle))
        new.meta.update(node.meta)
        new.meta["graphprune"] = {"pass": "backend-sparse-forms", "form": rec.chosen}
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    memo.save()
    report.notes.extend(memo.notes)


def graphprune_backend(gm: fx.GraphModule, example_inputs: list[Any], **kwargs: Any) -> Callable[..., Any]:
    """The Dynamo backend (see the module docstring). ``kwargs``: ``options`` (dict) and ``mode``
    (accepted and ignored, as torch.compile passes it to every backend)."""
    opts = BackendOptions.from_options(kwargs.get("options"))
    report = BackendReport()
    REPORTS.append(report)
    values = _static_weights(gm, list(example_inputs))
    kernels: list[nn.Module] = []
    on_cuda = any(isinstance(t, Tensor) and t.is_cuda for t in example_inputs)
    asked_graphs = kwargs.get("mode") == "reduce-overhead" or opts.cudagraphs is True
    graph_mode = on_cuda and opts.cudagraphs is not False and opts.inductor
    if opts.pattern is not None:
        _prune(gm, values, opts, report)
    if opts.accelerate:
        if torch.is_grad_enabled():
            report.notes.append("grad mode is on: sparse runtime forms are inference-only, none applied")
        else:
            _accelerate(gm, values, opts, report, kernels, "graph" if graph_mode else "eager")
    gm.graph.lint()
    gm.recompile()
    converted_cuda = any(f.get("chosen", "dense") != "dense" and f.get("device", "").startswith("cuda") for f in report.forms)
    use_graphs = on_cuda and opts.cudagraphs is not False and (converted_cuda or asked_graphs)
    if opts.inductor:
        try:
            from torch._inductor.compile_fx import compile_fx

            work = fx.GraphModule(gm, copy.deepcopy(gm.graph))  # inductor may rewrite the graph it gets
            patches = {"triton.cudagraphs": True} if use_graphs else None
            compiled = compile_fx(work, list(example_inputs), config_patches=patches)
            report.compiler = "inductor + CUDA graphs" if use_graphs else "inductor"
            return _keep_alive(cast(Callable[..., Any], compiled), kernels)
        except Exception as e:  # fall back to the rewritten graph, eagerly
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            log.warning("graphprune backend: inductor failed (%s); running the rewritten graph eagerly", reason)
            report.compiler = f"eager (inductor failed: {reason})"
            return _keep_alive(gm.forward, kernels)
    report.compiler = "eager (inductor=False)"
    return _keep_alive(gm.forward, kernels)


class _WithKernels:
    """The compiled callable plus strong references to the sparse kernels its graph calls by handle
    (the handle registry is weak: the kernels live exactly as long as Dynamo keeps this callable)."""

    def __init__(self, fn: Callable[..., Any], kernels: list[nn.Module]) -> None:
        self.fn = fn
        self.kernels = kernels
        self._boxed_call = getattr(fn, "_boxed_call", False)  # keep inductor's calling convention

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def _keep_alive(fn: Callable[..., Any], kernels: list[nn.Module]) -> Callable[..., Any]:
    return _WithKernels(fn, kernels) if kernels else fn


def register() -> None:
    """Register the backend with Dynamo by name (the entry point normally does this)."""
    from torch._dynamo.backends.registry import _BACKENDS, register_backend

    if "graphprune" not in _BACKENDS:
        register_backend(name="graphprune")(graphprune_backend)  # type: ignore[arg-type]
