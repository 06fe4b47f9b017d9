"""Pre-flight micro-benchmarks: time candidate computations the way BENCHMARKING.md asks.

- :func:`record_layer_inputs` runs the model once on its example inputs with forward pre-hooks and
  keeps each named layer's real input (batch × tokens as the model will see them).
- :func:`time_alternating` times several callables in alternating blocks (A B C A B C ...) after
  untimed warm-up runs, and returns min / median per callable; :func:`speedup` is the ratio of
  medians. Each block repeats a callable until it has run for ``min_block_s`` (calibrated on the
  warm-up), so short kernels are not lost in timer noise. CUDA work is synchronized around every
  block when any argument lives on a GPU (``sync=True``).
- ``mode="graph"`` times the callables as they run inside a CUDA graph: each is captured
  (:func:`graphprune.runtime.semi_cuda.graphs.graphed`) with enough back-to-back copies that one
  replay lasts about ``graph_target_s`` (at most ``max_graph_reps`` copies), and the replays are
  timed in the same alternating blocks; a sample is the time per copy. This is the mode a model
  deployed under CUDA graphs runs in: no host work per kernel, no launch gap between kernels. On an
  H100 it decides whether 2:4 wins (eager cuSPARSELt calls pay ~0.5 ms of host set-up each).

Nothing here decides anything: :mod:`graphprune.passes.convert_sparse_forms`, the
``torch.compile`` backend and ``graphprune bench`` read the timings and decide.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["Timing", "record_layer_inputs", "speedup", "time_alternating"]


@dataclass
class Timing:
    """Per-call times of one callable, in milliseconds, one sample per block."""

    samples_ms: list[float] = field(default_factory=list)
    reps: int = 1
    graph_reps: int = 0  # copies per graph replay in mode="graph" (0: eager)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = {"min_ms": self.min_ms, "median_ms": self.median_ms, "blocks": len(self.samples_ms), "reps": self.reps}
        if self.graph_reps:
            d["graph_reps"] = self.graph_reps
        return d


def speedup(baseline: Timing, candidate: Timing) -> float:
    """``baseline.median / candidate.median``: > 1 when the candidate is faster."""
    c = candidate.median_ms
    return baseline.median_ms / c if c and c > 0 else float("nan")


def _sync_fn(enabled: bool) -> Callable[[], None]:
    if enabled and torch.cuda.is_available():
        return torch.cuda.synchronize
    return lambda: None


def time_alternating(
    fns: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 2,
    blocks: int = 7,
    min_block_s: float = 0.01,
    max_reps: int = 10_000,
    sync: bool = False,
    mode: Literal["eager", "graph"] = "eager",
    capturer: Any = None,
    graph_target_s: float = 5e-4,
    max_graph_reps: int = 16,
) -> dict[str, Timing]:
    """Time every callable of ``fns`` in alternating blocks; see the module docstring.

    Runs under ``torch.no_grad()``. ``sync``: call ``torch.cuda.synchronize()`` before and after
    each block (host timers are meaningless for asynchronous CUDA work without it). ``mode``:
    ``"eager"`` calls the callables; ``"graph"`` replays CUDA graphs of them (``capturer``: default
    :func:`graphprune.runtime.semi_cuda.graphs.default_capturer`).
    """
    if blocks < 1 or warmup < 0:
        raise ValueError(f"blocks must be >= 1 and warmup >= 0, got blocks={blocks}, warmup={warmup}")
    if mode not in ("eager", "graph"):
        raise ValueError(f"mode must be 'eager' or 'graph', got {mode!r}")
    sync_fn = _sync_fn(sync)
    graph_reps: dict[str, int] = {}
    if mode == "graph":
        fns, graph_reps = _graphed_fns(fns, sync_fn, capturer, graph_target_s, max_graph_reps)
    reps: dict[str, int] = {}
    with torch.no_grad():
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            sync_fn()
            t0 = time.perf_counter()
            fn()
            sync_fn()
            one = max(time.perf_counter() - t0, 1e-7)
            reps[name] = int(min(max_reps, max(1, round(min_block_s / one))))
        out = {name: Timing(reps=reps[name]) for name in fns}
        for _ in range(blocks):
            for name, fn in fns.items():
                r = reps[name]
                sync_fn()
                t0 = time.perf_counter()
                for _ in range(r):
                    fn()
                sync_fn()
                out[name].samples_ms.append((time.perf_counter() - t0) / r * 1e3 / graph_reps.get(name, 1))
    for name, g in graph_reps.items():
        out[name].graph_reps = g
    return out


def _graphed_fns(
    fns: Mapping[str, Callable[[], Any]], sync_fn: Callable[[], None], capturer: Any, target_s: float, max_graph_reps: int
) -> tuple[dict[str, Callable[[], Any]], dict[str, int]]:
    """Each callable as the replay of a graph holding enough copies of it (module docstring)."""
    from graphprune.runtime.semi_cuda.graphs import default_capturer, graphed

    cap = capturer or default_capturer()
    replays: dict[str, Callable[[], Any]] = {}
    reps: dict[str, int] = {}
    with torch.no_grad():
        for name, fn in fns.items():
            one = graphed(fn, reps=1, capturer=cap)
            one()
            sync_fn()
            t0 = time.perf_counter()
            for _ in range(3):
                one()
            sync_fn()
            per = max((time.perf_counter() - t0) / 3, 1e-7)
            r = int(min(max_graph_reps, max(1, -(-target_s // per))))
            replays[name] = one if r == 1 else graphed(fn, reps=r, capturer=cap)
            reps[name] = r
    return replays, reps


def _detach(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (list, tuple)):
        return type(x)(_detach(v) for v in x)
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return x


def record_layer_inputs(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    names: Iterable[str],
    *,
    example_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """Run ``model(*example_inputs)`` once and return, for each submodule fqn in ``names`` that ran,
    the ``(args, kwargs)`` of its first call (detached copies). Layers that did not run are absent."""
    wanted = list(dict.fromkeys(names))
    seen: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    handles = []
    for name in wanted:
        mod = model.get_submodule(name)

        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _name: str = name) -> None:
            if _name not in seen:
                seen[_name] = (_detach(args), _detach(kwargs))

        handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(*example_inputs, **dict(example_kwargs or {}))
    finally:
        for h in handles:
            h.remove()
    return seen
