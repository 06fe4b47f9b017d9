"""The Dynamo adapter: ``torch.compile(model, backend="graphprune")`` runs prune -> accelerate -> inductor.

Registered through the ``torch_dynamo_backends`` entry point declared in pyproject.toml
(``graphprune = "graphprune.backend:graphprune_backend"``, an instance of :class:`GraphpruneBackend`), so Dynamo finds it by name once the
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
   the form :func:`graphprune.passes.convert_sparse_forms.choose_form` picks by measurement at
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

Every compiled graph appends a :class:`~graphprune.backend.options.BackendReport` to the backend
object's ``reports`` (the last 32); :func:`last_report` returns the newest.

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
import logging
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, fx, nn

from graphprune.backend.accelerate import accelerate_graph
from graphprune.backend.graph import static_weights
from graphprune.backend.options import BackendOptions, BackendReport
from graphprune.backend.prune import prune_graph

log = logging.getLogger("graphprune.backend")

__all__ = ["CompiledGraph", "GraphpruneBackend", "graphprune_backend", "last_report", "register"]


class GraphpruneBackend:
    """The backend as an object: calling it compiles one graph; ``reports`` keeps the last 32 reports."""

    def __init__(self, keep: int = 32) -> None:
        self.reports: collections.deque[BackendReport] = collections.deque(maxlen=keep)

    def last_report(self) -> BackendReport | None:
        """The report of the graph compiled most recently (None before any)."""
        return self.reports[-1] if self.reports else None

    def __call__(self, gm: fx.GraphModule, example_inputs: list[Any], **kwargs: Any) -> Callable[..., Any]:
        """Compile ``gm`` (see the module docstring). ``kwargs``: ``options`` (dict) and ``mode`` (as
        torch.compile passes it to every backend; ``"reduce-overhead"`` asks for CUDA graphs)."""
        opts = BackendOptions.from_options(kwargs.get("options"))
        report = BackendReport()
        self.reports.append(report)
        values = static_weights(gm, list(example_inputs))
        kernels: list[nn.Module] = []
        on_cuda = any(isinstance(t, Tensor) and t.is_cuda for t in example_inputs)
        asked_graphs = kwargs.get("mode") == "reduce-overhead" or opts.cudagraphs is True
        graph_mode = on_cuda and opts.cudagraphs is not False and opts.inductor
        if opts.pattern is not None:
            prune_graph(gm, values, opts, report)
        if opts.accelerate:
            if torch.is_grad_enabled():
                report.notes.append("grad mode is on: sparse runtime forms are inference-only, none applied")
            else:
                accelerate_graph(gm, values, opts, report, kernels, "graph" if graph_mode else "eager")
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
                return CompiledGraph.wrap(cast(Callable[..., Any], compiled), kernels)
            except Exception as e:  # fall back to the rewritten graph, eagerly
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                log.warning("graphprune backend: inductor failed (%s); running the rewritten graph eagerly", reason)
                report.compiler = f"eager (inductor failed: {reason})"
                return CompiledGraph.wrap(gm.forward, kernels)
        report.compiler = "eager (inductor=False)"
        return CompiledGraph.wrap(gm.forward, kernels)


class CompiledGraph:
    """The compiled callable plus strong references to the sparse kernels its graph calls by handle
    (the handle registry is weak: the kernels live exactly as long as Dynamo keeps this callable)."""

    def __init__(self, fn: Callable[..., Any], kernels: list[nn.Module]) -> None:
        self.fn = fn
        self.kernels = kernels
        self._boxed_call = getattr(fn, "_boxed_call", False)  # keep inductor's calling convention

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    @classmethod
    def wrap(cls, fn: Callable[..., Any], kernels: list[nn.Module]) -> Callable[..., Any]:
        return cls(fn, kernels) if kernels else fn


graphprune_backend = GraphpruneBackend()


def last_report() -> BackendReport | None:
    """The report of the graph the ``graphprune`` backend compiled most recently (None before any)."""
    return graphprune_backend.last_report()


def register() -> None:
    """Register the backend with Dynamo by name (the entry point normally does this)."""
    from torch._dynamo.backends.registry import _BACKENDS, register_backend

    if "graphprune" not in _BACKENDS:
        register_backend(name="graphprune")(graphprune_backend)
