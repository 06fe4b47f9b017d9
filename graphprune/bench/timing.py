"""How ``graphprune bench`` times dense vs pruned on each runtime, and the machine it ran on.

Each ``_bench_<runtime>`` takes the dense and the pruned form (modules for ``torch``, ONNX files for
``ort`` and ``tensorrt``), times them alternately as :mod:`graphprune.bench` describes, and fills
``report.end_to_end`` (``{"dense"|"pruned": {min_ms, median_ms}}``), ``report.layers`` and
``report.notes`` of the :class:`~graphprune.bench.report.BenchReport` it is given; it changes
neither model. :func:`machine_info` is recorded in the report's settings.
"""

from __future__ import annotations

import contextlib
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphprune.bench.report import BenchReport, LayerTiming


# ---- environment -------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "machine": cpu_model(),
        "cores": _cores(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info.update(gpu_info())
    return info


def gpu_info() -> dict[str, Any]:
    """The GPU facts every GPU figure is recorded with: model, compute capability, driver, CUDA and
    cuSPARSELt versions (empty without CUDA)."""
    if not torch.cuda.is_available():
        return {}
    import subprocess

    from graphprune.runtime.semi_cuda.kernels import get_kernel

    major, minor = torch.cuda.get_device_capability()
    info: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(),
        "capability": f"{major}.{minor}",
        "cuda": torch.version.cuda,
        "cusparselt": get_kernel("cusparselt").version(),
    }
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        info["driver"] = "unknown (nvidia-smi not found)"
    return info


def _cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- torch -------------------------------------------------------------------------------------------
def _timed_modules(model: nn.Module) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, mod in model.named_modules():
        kind = type(mod).__name__
        if name and (isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or kind in ("CSRLinear", "Conv1D", "CastSemiStructuredLinear", "SemiSparseLinear")):
            out[name] = kind
    return out


def _summary(samples_ms: list[float]) -> dict[str, Any]:
    """One side's end-to-end figures: min, median, max and every block's time (ms)."""
    return {"min_ms": min(samples_ms), "median_ms": statistics.median(samples_ms), "max_ms": max(samples_ms),
            "samples_ms": list(samples_ms)}


def _call(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return mod(*args, **kwargs)


def _bench_torch(dense: nn.Module, pruned: nn.Module, inputs: tuple[Any, ...], report: BenchReport, *, blocks: int, warmup: int, per_layer: bool) -> None:
    from graphprune.runtime.microbench import time_alternating

    t = time_alternating({"dense": lambda: dense(*inputs), "pruned": lambda: pruned(*inputs)}, warmup=warmup, blocks=blocks, min_block_s=0.05)
    report.end_to_end = {k: _summary(v.samples_ms) for k, v in t.items()}
    if per_layer:
        _time_layers(dense, pruned, inputs, report, note=_cpu_note, blocks=blocks)


def _time_layers(dense: nn.Module, pruned: nn.Module, inputs: tuple[Any, ...], report: BenchReport, *,
                 note: Callable[[nn.Module, nn.Module, str, str], str], blocks: int, **timing: Any) -> None:
    """One row per layer both models have: dense vs pruned medians on the layer's real input (recorded
    from a forward of each model), timed like the end to end (``timing``: sync, mode, capturer);
    ``note(dense_layer, pruned_layer, dense_form, pruned_form)`` says what changed."""
    from graphprune.runtime.microbench import record_layer_inputs, time_alternating

    d_mods, p_mods = _timed_modules(dense), _timed_modules(pruned)
    names = [n for n in d_mods if n in p_mods]
    d_in = record_layer_inputs(dense, inputs, names)
    p_in = record_layer_inputs(pruned, inputs, names)
    for name in names:
        row = LayerTiming(name, op=p_mods[name])
        if name not in d_in or name not in p_in:
            row.note = "did not run on the example inputs"
            report.layers.append(row)
            continue
        dm, pm = dense.get_submodule(name), pruned.get_submodule(name)
        (da, dk), (pa, pk) = d_in[name], p_in[name]
        lt = time_alternating(
            {"dense": functools.partial(_call, dm, da, dk), "pruned": functools.partial(_call, pm, pa, pk)},
            warmup=1, blocks=blocks, min_block_s=0.005, **timing,
        )
        row.dense_ms, row.pruned_ms = lt["dense"].median_ms, lt["pruned"].median_ms
        row.note = note(dm, pm, d_mods[name], p_mods[name])
        report.layers.append(row)


def _cpu_note(dm: nn.Module, pm: nn.Module, dense_form: str, pruned_form: str) -> str:
    dw, pw = getattr(dm, "weight", None), getattr(pm, "weight", None)
    if isinstance(dw, torch.Tensor) and isinstance(pw, torch.Tensor) and pw.layout == torch.strided and tuple(dw.shape) != tuple(pw.shape):
        return f"shrunk {list(dw.shape)} -> {list(pw.shape)}"
    return f"form {pruned_form}" if pruned_form != dense_form else ""


# ---- CUDA ----------------------------------------------------------------------------------------------
def _bench_cuda(
    dense: nn.Module,
    pruned: nn.Module,
    inputs: tuple[Any, ...],
    report: BenchReport,
    *,
    mode: str,
    blocks: int,
    warmup: int,
    per_layer: bool,
    capturer: Any = None,
) -> None:
    """Dense vs pruned on the device the models live on, in ``mode`` ("graph": each model replayed
    from CUDA graphs, one per input shape; "eager"): end to end, then per layer on each layer's real
    input, in the same mode (each layer captured on its own)."""
    from graphprune.runtime.microbench import time_alternating
    from graphprune.runtime.semi_cuda.graphs import CudaGraphRunner

    sync = any(isinstance(t, torch.Tensor) and t.is_cuda for t in inputs)
    if mode == "graph":
        rd = CudaGraphRunner(dense, clone_outputs=False, capturer=capturer, name="dense model")
        rp = CudaGraphRunner(pruned, clone_outputs=False, capturer=capturer, name="pruned model")
        fns = {"dense": functools.partial(rd, *inputs), "pruned": functools.partial(rp, *inputs)}
    else:
        fns = {"dense": functools.partial(dense, *inputs), "pruned": functools.partial(pruned, *inputs)}
    t = time_alternating(fns, warmup=warmup, blocks=blocks, min_block_s=0.05, sync=sync)
    report.end_to_end = {k: _summary(v.samples_ms) for k, v in t.items()}
    report.notes.append(
        f"execution mode: {mode}" + (" (each model replayed from one CUDA graph per input shape; outputs not cloned)" if mode == "graph" else "")
    )
    if per_layer:
        _time_layers(dense, pruned, inputs, report, note=_cuda_note, blocks=blocks, sync=sync, mode=mode, capturer=capturer)


def _cuda_note(dm: nn.Module, pm: nn.Module, dense_form: str, pruned_form: str) -> str:
    if pruned_form == dense_form:
        return ""
    routes = getattr(pm, "routes", None)
    return f"form {pruned_form}" + (f" routes {{{', '.join(f'{k}: {r.form}' for k, r in sorted(routes.items()))}}}" if routes else "")


# ---- onnxruntime -------------------------------------------------------------------------------------
def _ort_session(path: Path, threads: int, profile_prefix: str | None = None) -> Any:
    from graphprune.runtime.ort import _ort

    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_block(path: Path, feed_of: Callable[[Any], dict[str, Any]], threads: int, warmup: int, min_block_s: float) -> float:
    """Create a session, warm it up, time one block, delete it: ms per run."""
    sess = _ort_session(path, threads)
    try:
        feed = feed_of(sess)
        for _ in range(max(1, warmup)):
            sess.run(None, feed)
        t0 = time.perf_counter()
        sess.run(None, feed)
        one = max(time.perf_counter() - t0, 1e-6)
        reps = max(1, min(1000, round(min_block_s / one)))
        t0 = time.perf_counter()
        for _ in range(reps):
            sess.run(None, feed)
        return (time.perf_counter() - t0) / reps * 1e3
    finally:
        del sess


def _ort_profile(path: Path, feed_of: Callable[[Any], dict[str, Any]], threads: int, runs: int, tmp: Path) -> dict[str, tuple[str, float]]:
    """node name -> (op type, median kernel ms over ``runs``), from onnxruntime's profiler."""
    sess = _ort_session(path, threads, profile_prefix=str(tmp / f"ort-profile-{path.stem}"))
    try:
        feed = feed_of(sess)
        for _ in range(runs + 1):
            sess.run(None, feed)
        prof = Path(sess.end_profiling())
    finally:
        del sess
    events = json.loads(prof.read_text())
    prof.unlink(missing_ok=True)
    per: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for ev in events:
        name = str(ev.get("name", ""))
        if ev.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name.removesuffix("_kernel_time")
        per.setdefault(node, []).append(float(ev.get("dur", 0)) / 1e3)
        ops[node] = str((ev.get("args") or {}).get("op_name", ""))
    # the first run is a warm-up: drop each node's first sample when there are more
    return {n: (ops[n], statistics.median(v[1:] if len(v) > 1 else v)) for n, v in per.items()}


def _bench_ort(dense_path: Path, pruned_path: Path, inputs: Any, report: BenchReport, *, threads: int, blocks: int, warmup: int, per_layer: bool, tmp: Path) -> None:
    from graphprune.runtime.ort import _feed

    def feed_of(sess: Any) -> dict[str, Any]:
        return _feed(sess, inputs, None)

    samples: dict[str, list[float]] = {"dense": [], "pruned": []}
    for _ in range(blocks):
        for name, path in (("dense", dense_path), ("pruned", pruned_path)):
            samples[name].append(_ort_block(path, feed_of, threads, warmup, 0.1))
    report.end_to_end = {k: _summary(v) for k, v in samples.items()}
    report.notes.append(
        f"onnxruntime CPUExecutionProvider, intra_op_num_threads={threads}, inter_op_num_threads=1, ORT_ENABLE_ALL, "
        "one session alive at a time"
    )
    if not per_layer:
        return
    d = _ort_profile(dense_path, feed_of, threads, max(5, blocks), tmp)
    p = _ort_profile(pruned_path, feed_of, threads, max(5, blocks), tmp)
    for node in list(d) + [n for n in p if n not in d]:
        op = (d.get(node) or p[node])[0]
        row = LayerTiming(node, op=op, dense_ms=d[node][1] if node in d else None, pruned_ms=p[node][1] if node in p else None)
        if node not in p:
            row.note = "only in the dense graph"
        elif node not in d:
            row.note = "only in the pruned graph"
        report.layers.append(row)
    report.notes.append("per-layer: onnxruntime profiler kernel times (median over runs), nodes matched by name")


# ---- TensorRT ----------------------------------------------------------------------------------------
def _bench_tensorrt(dense_path: Path, pruned_path: Path, report: BenchReport, *, blocks: int) -> None:
    from graphprune.runtime.tensorrt import build_engine, time_engines

    dense_b = build_engine(dense_path, sparse=False, fp16=True)
    sparse_b = build_engine(pruned_path, sparse=True, fp16=True)
    t = time_engines({"dense": dense_b.engine, "pruned": sparse_b.engine}, blocks=blocks)
    report.end_to_end = t
    for lay in sparse_b.layers:
        note = "sparse tactic" if lay.sparse else ("eligible, dense tactic faster" if lay.eligible else "")
        report.layers.append(LayerTiming(lay.name, op=lay.layer_type, note=note))
    report.notes.append(f"TensorRT fp16; pruned engine built with SPARSE_WEIGHTS; {len(sparse_b.picked)} layer(s) picked sparse tactics")
