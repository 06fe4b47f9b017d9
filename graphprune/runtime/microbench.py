"""Pre-flight micro-benchmarks: time candidate computations the way BENCHMARKING.md asks.

- :func:`record_layer_inputs` runs the model once on its example inputs with forward pre-hooks and
  keeps each named layer's real input (batch × tokens as the model will see them).
- :func:`time_alternating` times several callables in alternating blocks (A B C A B C ...) after
  untimed warm-up runs, and returns min / median per callable; :func:`speedup` is the ratio of
  medians. Each block repeats a callable until it has run for ``min_block_s`` (calibrated on the
  warm-up), so short kernels are not lost in timer noise. CUDA work is synchronized around every
  block when any argument lives on a GPU (``sync=True``).

Nothing here decides anything: :mod:`graphprune.passes.fx.convert_sparse_forms`, the
``torch.compile`` backend and ``graphprune bench`` read the timings and decide.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["Timing", "record_layer_inputs", "speedup", "time_alternating"]


@dataclass
class Timing:
    """Per-call times of one callable, in milliseconds, one sample per block."""

    samples_ms: list[float] = field(default_factory=list)
    reps: int = 1

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms) if self.samples_ms else float("nan")

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"min_ms": self.min_ms, "median_ms": self.median_ms, "blocks": len(self.samples_ms), "reps": self.reps}


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
) -> dict[str, Timing]:
    """Time every callable of ``fns`` in alternating blocks; see the module docstring.

    Runs under ``torch.no_grad()``. ``sync``: call ``torch.cuda.synchronize()`` before and after
    each block (host timers are meaningless for asynchronous CUDA work without it).
    """
    if blocks < 1 or warmup < 0:
        raise ValueError(f"blocks must be >= 1 and warmup >= 0, got blocks={blocks}, warmup={warmup}")
    sync_fn = _sync_fn(sync)
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
                out[name].samples_ms.append((time.perf_counter() - t0) / r * 1e3)
    return out


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
