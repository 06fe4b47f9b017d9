"""CUDA-graph capture and replay: the part of the 2:4 runtime that removes per-call host work.

On an H100 every eager ``torch._cslt_sparse_mm`` call spends ~0.4-0.5 ms on the host building
cuSPARSELt descriptors and a plan; a CUDA graph records the kernels once and replays them with no
host work per kernel, which is where 2:4 becomes faster than dense (DESIGN.md, "2:4 on Hopper").

- A *capturer* records a callable: :class:`CudaGraphCapturer` warms it up on a side stream
  (``warmup`` runs, the first under ``torch.cuda.set_sync_debug_mode("error")`` so that a
  host-synchronising op fails there with its name instead of breaking the capture), then captures
  one run into a ``torch.cuda.CUDAGraph`` and returns ``(replay, outputs)``. :class:`StandInCapturer`
  has the same interface without a GPU (replay re-runs the callable and writes into the captured
  outputs, so aliasing behaves as with a real graph); tests and dry runs use it through
  :func:`use_capturer`. :func:`default_capturer` is the CUDA one, or the stand-in set by
  :func:`use_capturer`, or a DependencyError.
- :func:`graphed` captures ``reps`` back-to-back copies of a callable in one graph (the pre-flight
  times layers this way: in a whole-model graph kernels run back to back, with no launch gap
  between them).
- :class:`CudaGraphRunner` wraps a callable (a model) and keeps one graph per input signature
  (tensor shapes, dtypes and devices, plus the non-tensor arguments): the first call with a new
  signature captures, later calls copy the inputs into the graph's static input buffers and
  replay. ``max_graphs`` bounds how many signatures are kept (least recently used dropped first);
  ``clone_outputs=False`` returns the graph's static outputs, which the next replay overwrites.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from graphprune.errors import ConfigError, DependencyError, UnsupportedModelError

__all__ = [
    "CaptureStats",
    "Capturer",
    "CudaGraphCapturer",
    "CudaGraphRunner",
    "StandInCapturer",
    "default_capturer",
    "graphed",
    "use_capturer",
]


class Capturer(Protocol):
    """Records ``fn`` once; returns ``(replay, outputs)`` where ``replay()`` re-runs the recording and
    leaves its results in ``outputs``."""

    kind: str

    def capture(self, fn: Callable[[], Any]) -> tuple[Callable[[], None], Any]: ...


class CudaGraphCapturer:
    """Capture into ``torch.cuda.CUDAGraph`` (see the module docstring)."""

    kind = "cuda-graph"

    def __init__(self, warmup: int = 3, *, sync_check: bool = True) -> None:
        if warmup < 1:
            raise ConfigError(f"CudaGraphCapturer.warmup must be >= 1 (cuBLAS / cuSPARSELt initialise lazily), got {warmup}")
        self.warmup = warmup
        self.sync_check = sync_check

    def capture(self, fn: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        if not torch.cuda.is_available():
            raise DependencyError("CUDA-graph capture needs a CUDA GPU (torch.cuda.is_available() is False)")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        sync_error: str | None = None
        with torch.cuda.stream(side):
            for i in range(self.warmup):
                if i == 0 and self.sync_check:
                    before = torch.cuda.get_sync_debug_mode()
                    torch.cuda.set_sync_debug_mode("error")
                    try:
                        fn()
                    except RuntimeError as e:  # a host sync: the capture will likely fail; say where
                        sync_error = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                    finally:
                        torch.cuda.set_sync_debug_mode(before)
                else:
                    fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                out = fn()
        except Exception as e:
            if sync_error:
                raise RuntimeError(f"{e} (a warm-up run synchronised with the host: {sync_error})") from e
            raise
        return graph.replay, out


class StandInCapturer:
    """The capturer interface without a GPU, for tests and dry runs; counts what it did."""

    kind = "stand-in"

    def __init__(self, warmup: int = 1) -> None:
        self.warmup = warmup
        self.captures = 0
        self.replays = 0

    def capture(self, fn: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        for _ in range(self.warmup):
            fn()
        out = fn()
        self.captures += 1
        static = [t for t in pytree.tree_leaves(out) if isinstance(t, Tensor)]

        def replay() -> None:
            self.replays += 1
            fresh = [t for t in pytree.tree_leaves(fn()) if isinstance(t, Tensor)]
            for s, f in zip(static, fresh):
                s.copy_(f)

        return replay, out


_OVERRIDE: list[Capturer] = []


@contextlib.contextmanager
def use_capturer(capturer: Capturer) -> Iterator[Capturer]:
    """Make ``capturer`` the :func:`default_capturer` inside the ``with`` block (tests, dry runs)."""
    _OVERRIDE.append(capturer)
    try:
        yield capturer
    finally:
        _OVERRIDE.remove(capturer)


def default_capturer() -> Capturer:
    """The capturer set by :func:`use_capturer`, else a :class:`CudaGraphCapturer` (CUDA needed)."""
    if _OVERRIDE:
        return _OVERRIDE[-1]
    if not torch.cuda.is_available():
        raise DependencyError("graph mode needs a CUDA GPU (torch.cuda.is_available() is False); use mode='eager'")
    return CudaGraphCapturer()


def graphed(fn: Callable[[], Any], *, reps: int = 1, capturer: Capturer | None = None) -> Callable[[], None]:
    """``fn`` captured ``reps`` times back to back in one graph; returns the replay callable."""
    if reps < 1:
        raise ConfigError(f"graphed: reps must be >= 1, got {reps}")
    cap = capturer or default_capturer()

    def body() -> Any:
        out = None
        for _ in range(reps):
            out = fn()
        return out

    with torch.no_grad():
        replay, _ = cap.capture(body)
    return replay


def _signature(leaves: list[Any]) -> tuple[Any, ...]:
    sig: list[Any] = []
    for v in leaves:
        if isinstance(v, Tensor):
            sig.append(("T", tuple(v.shape), v.dtype, str(v.device)))
        else:
            try:
                hash(v)
            except TypeError:
                raise ConfigError(f"CudaGraphRunner: non-tensor argument of type {type(v).__name__} is not hashable") from None
            sig.append(("V", type(v).__name__, v))
    return tuple(sig)


@dataclass
class _Entry:
    replay: Callable[[], None]
    static_in: list[Tensor | None]
    out_leaves: list[Any]
    out_spec: Any


@dataclass
class CaptureStats:
    """What a :class:`CudaGraphRunner` did: captures, replays and evictions."""

    captures: int = 0
    replays: int = 0
    evictions: int = 0
    signatures: list[str] = field(default_factory=list)


class CudaGraphRunner:
    """``fn(*args, **kwargs)`` replayed from one captured graph per input signature (module docstring).

    ``fn``: the callable to run (e.g. a model). ``capturer``: default :func:`default_capturer`.
    ``inference``: capture and replay under ``torch.no_grad()``. ``name``: used in error messages.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        max_graphs: int = 8,
        clone_outputs: bool = True,
        capturer: Capturer | None = None,
        inference: bool = True,
        name: str | None = None,
    ) -> None:
        if max_graphs < 1:
            raise ConfigError(f"CudaGraphRunner.max_graphs must be >= 1, got {max_graphs}")
        self.fn = fn
        self.max_graphs = max_graphs
        self.clone_outputs = clone_outputs
        self.capturer = capturer
        self.inference = inference
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.stats = CaptureStats()
        self._graphs: collections.OrderedDict[tuple[Any, ...], _Entry] = collections.OrderedDict()

    @property
    def module(self) -> Any:
        """The wrapped callable (the model)."""
        return self.fn

    def __len__(self) -> int:
        return len(self._graphs)

    def _capture(self, key: tuple[Any, ...], leaves: list[Any], spec: Any) -> _Entry:
        static_in: list[Tensor | None] = [v.detach().clone() if isinstance(v, Tensor) else None for v in leaves]
        call_leaves = [s if s is not None else v for s, v in zip(static_in, leaves)]

        def body() -> Any:
            args, kwargs = pytree.tree_unflatten(call_leaves, spec)
            return self.fn(*args, **kwargs)

        cap = self.capturer or default_capturer()
        desc = ", ".join(f"{list(k[1])}:{str(k[2]).removeprefix('torch.')}" if k[0] == "T" else repr(k[2]) for k in key)
        try:
            ctx = torch.no_grad() if self.inference else contextlib.nullcontext()
            with ctx:
                replay, out = cap.capture(body)
        except (ConfigError, DependencyError):
            raise
        except Exception as e:
            first = str(e).splitlines()[0][:300] if str(e) else ""
            raise UnsupportedModelError(
                f"{self.name}: could not capture a {cap.kind} for inputs ({desc}): {type(e).__name__}: {first}; "
                "run it in eager mode, or make the forward free of host synchronisation and data-dependent shapes"
            ) from e
        out_leaves, out_spec = pytree.tree_flatten(out)
        self.stats.captures += 1
        self.stats.signatures.append(desc)
        return _Entry(replay, static_in, out_leaves, out_spec)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        key = (spec, *_signature(leaves))
        entry = self._graphs.get(key)
        if entry is None:  # a capture records the kernels without running them: replay below computes
            entry = self._capture(key[1:], leaves, spec)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
                self.stats.evictions += 1
        else:
            self._graphs.move_to_end(key)
            for s, v in zip(entry.static_in, leaves):
                if s is not None:
                    s.copy_(v)
        entry.replay()
        self.stats.replays += 1
        outs = [o.clone() if self.clone_outputs and isinstance(o, Tensor) else o for o in entry.out_leaves]
        return pytree.tree_unflatten(outs, entry.out_spec)
