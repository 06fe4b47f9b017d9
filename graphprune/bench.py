"""``graphprune bench MODEL``: dense vs pruned latency on one runtime, end to end and per layer.

The model is pruned with :func:`graphprune.compile` (the pattern options of ``graphprune compile``),
then both versions are timed on the same example inputs, in the same process, as
BENCHMARKING.md asks: untimed warm-up, alternating blocks (dense, pruned, dense, ...), min and
median per side, the ratio of medians (``dense / pruned``: > 1 means the pruned model is faster).

Runtimes:

- ``torch``: PyTorch eager on CPU (``torch.set_num_threads(threads)``). The pruned model gets the
  runtime forms of :mod:`graphprune.passes.fx.convert_sparse_forms` (CSR where it measures faster;
  off with ``sparse_forms=False``). Per layer: every Linear/Conv module present in both models is
  timed on its real input (recorded with forward hooks), dense layer vs pruned layer.
- ``ort``: onnxruntime CPUExecutionProvider, ``intra_op_num_threads=threads``,
  ``inter_op_num_threads=1``, ``ORT_ENABLE_ALL``; **one session alive at a time** (each block
  creates a session, warms it up, times it and deletes it). Per layer: a separate profiling run
  of each model (onnxruntime's profiler; median kernel time per node over the runs), matched by
  node name.
- ``tensorrt``: engines from the dense and the pruned ONNX (the pruned one with
  ``SPARSE_WEIGHTS``), fp16, timed with CUDA events; per layer: which layers picked sparse tactics
  (engine inspector and build log). Needs TensorRT and a GPU (DependencyError otherwise).

Outputs next to the compile report in ``out_dir``: ``bench.json`` and ``bench.png`` (matplotlib,
Agg backend: end-to-end bars and the slowest layers, dense vs pruned).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from graphprune.errors import ConfigError, DependencyError

__all__ = ["BenchReport", "LayerTiming", "add_bench_parser", "bench_model", "run_bench", "save_chart"]

RuntimeT = Literal["torch", "ort", "tensorrt"]
RUNTIMES: tuple[str, ...] = ("torch", "ort", "tensorrt")


@dataclass
class LayerTiming:
    name: str
    op: str = ""
    dense_ms: float | None = None  # median
    pruned_ms: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.dense_ms is None or not self.pruned_ms:
            return None
        return self.dense_ms / self.pruned_ms

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ratio": self.ratio}


@dataclass
class BenchReport:
    model: str
    runtime: str
    pattern: str
    end_to_end: dict[str, dict[str, float]] = field(default_factory=dict)  # {"dense"|"pruned": {min_ms, median_ms}}
    layers: list[LayerTiming] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    forms: list[dict[str, Any]] = field(default_factory=list)  # torch: runtime form per Linear
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        e = self.end_to_end
        if "dense" not in e or "pruned" not in e or not e["pruned"].get("median_ms"):
            return None
        return e["dense"]["median_ms"] / e["pruned"]["median_ms"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "runtime": self.runtime,
            "pattern": self.pattern,
            "end_to_end": self.end_to_end,
            "ratio": self.ratio,
            "layers": [lay.to_dict() for lay in self.layers],
            "settings": self.settings,
            "forms": self.forms,
            "notes": self.notes,
            "outputs": self.outputs,
        }

    def table(self, max_rows: int | None = 40) -> str:
        lines = [
            f"{self.model}: {self.pattern} on {self.runtime} ({self.settings.get('machine', '')})",
        ]
        head = f"{'layer':<56} {'op':<10} {'dense ms':>9} {'pruned ms':>9} {'ratio':>6}  note"
        lines += [head, "-" * len(head)]
        rows = sorted(self.layers, key=lambda r: -(r.dense_ms or 0.0))
        shown = rows if max_rows is None else rows[:max_rows]
        for r in shown:
            name = r.name if len(r.name) <= 56 else "…" + r.name[-55:]

            def ms(v: float | None) -> str:
                return f"{v:.3f}" if v is not None else "-"

            ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
            lines.append(f"{name:<56} {r.op[:10]:<10} {ms(r.dense_ms):>9} {ms(r.pruned_ms):>9} {ratio:>6}  {r.note}")
        if len(rows) > len(shown):
            lines.append(f"... {len(rows) - len(shown)} more layers (see bench.json)")
        lines.append("-" * len(head))
        e = self.end_to_end
        if e:
            d, p = e["dense"], e["pruned"]
            lines.append(
                f"end to end: dense median {d['median_ms']:.3f} ms (min {d['min_ms']:.3f}), pruned median "
                f"{p['median_ms']:.3f} ms (min {p['min_ms']:.3f}); dense/pruned = {self.ratio:.2f}x"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


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
        info["gpu"] = torch.cuda.get_device_name()
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
        if name and (isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or kind in ("CSRLinear", "Conv1D", "CastSemiStructuredLinear")):
            out[name] = kind
    return out


def _call(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return mod(*args, **kwargs)


def _bench_torch(dense: nn.Module, pruned: nn.Module, inputs: tuple[Any, ...], report: BenchReport, *, blocks: int, warmup: int, per_layer: bool) -> None:
    from graphprune.runtime.microbench import record_layer_inputs, time_alternating

    t = time_alternating({"dense": lambda: dense(*inputs), "pruned": lambda: pruned(*inputs)}, warmup=warmup, blocks=blocks, min_block_s=0.05)
    report.end_to_end = {k: {"min_ms": v.min_ms, "median_ms": v.median_ms} for k, v in t.items()}
    if not per_layer:
        return
    d_mods, p_mods = _timed_modules(dense), _timed_modules(pruned)
    names = [n for n in d_mods if n in p_mods]
    d_in = record_layer_inputs(dense, inputs, names)
    p_in = record_layer_inputs(pruned, inputs, names)
    for name in names:
        row = LayerTiming(name, op=p_mods[name] if p_mods[name] != d_mods[name] else d_mods[name])
        if name not in d_in or name not in p_in:
            row.note = "did not run on the example inputs"
            report.layers.append(row)
            continue
        dm, pm = dense.get_submodule(name), pruned.get_submodule(name)
        (da, dk), (pa, pk) = d_in[name], p_in[name]
        lt = time_alternating(
            {"dense": functools.partial(_call, dm, da, dk), "pruned": functools.partial(_call, pm, pa, pk)},
            warmup=1, blocks=blocks, min_block_s=0.005,
        )
        row.dense_ms, row.pruned_ms = lt["dense"].median_ms, lt["pruned"].median_ms
        dw, pw = getattr(dm, "weight", None), getattr(pm, "weight", None)
        if isinstance(dw, torch.Tensor) and isinstance(pw, torch.Tensor) and pw.layout == torch.strided and tuple(dw.shape) != tuple(pw.shape):
            row.note = f"shrunk {list(dw.shape)} -> {list(pw.shape)}"
        elif p_mods[name] != d_mods[name]:
            row.note = f"form {p_mods[name]}"
        report.layers.append(row)


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
    report.end_to_end = {k: {"min_ms": min(v), "median_ms": statistics.median(v)} for k, v in samples.items()}
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


# ---- driver ------------------------------------------------------------------------------------------
def bench_model(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    config: Any = None,
    *,
    runtime: RuntimeT = "torch",
    out_dir: str | Path,
    model_name: str | None = None,
    blocks: int = 7,
    warmup: int = 3,
    threads: int = 2,
    per_layer: bool = True,
    sparse_forms: bool = True,
    chart: bool = True,
    progress: bool = False,
) -> BenchReport:
    """Prune ``model`` with ``config`` (a CompileConfig; 2:4 by default) and time dense vs pruned on
    ``runtime``; writes ``bench.json`` (and ``bench.png``) into ``out_dir``. The caller's model is
    not modified."""
    from graphprune.api import compile as gp_compile
    from graphprune.api import copy_model
    from graphprune.config import CompileConfig

    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if blocks < 1 or warmup < 0 or threads < 1:
        raise ConfigError(f"blocks must be >= 1, warmup >= 0 and threads >= 1 (got {blocks}, {warmup}, {threads})")
    if runtime == "tensorrt":
        from graphprune.runtime.tensorrt import require_tensorrt

        require_tensorrt()  # fail before compiling anything
    config = config or CompileConfig()
    out = Path(out_dir)
    inputs = tuple(example_inputs)
    cfg = config if runtime != "torch" else dataclasses.replace(config, export_onnx=False)
    report = BenchReport(model=model_name or type(model).__name__, runtime=runtime, pattern=", ".join(map(str, config.pattern)))
    report.settings = {**machine_info(threads), "blocks": blocks, "warmup": warmup}
    with _torch_threads(threads):
        result = gp_compile(model, inputs, cfg, output_dir=out, progress=progress, model_name=report.model)
        report.outputs["report"] = str(out / "report.json")
        dense = copy_model(model).eval()
        if runtime == "torch":
            pruned = result.model.eval()
            if sparse_forms:
                from graphprune.passes.fx.convert_sparse_forms import apply_sparse_forms

                forms = apply_sparse_forms(pruned, inputs)
                report.forms = [lf.to_dict() for lf in forms.layers]
                report.notes.append(f"sparse runtime forms: {len(forms.converted)} of {len(forms.layers)} Linear layers converted (by measurement)")
            report.notes.append(f"PyTorch eager on CPU, torch.set_num_threads({threads})")
            with torch.no_grad():
                _bench_torch(dense, pruned, inputs, report, blocks=blocks, warmup=warmup, per_layer=per_layer)
        else:
            from graphprune.runtime.export import export_onnx

            if result.onnx_path is None:
                raise ConfigError("the ort and tensorrt runtimes need the ONNX export (export_onnx=True in the config)")
            dense_path = out / "dense.onnx"
            export_onnx(dense, inputs, dense_path, opset=config.opset)
            report.outputs["dense_onnx"] = str(dense_path)
            report.outputs["pruned_onnx"] = str(result.onnx_path)
            if runtime == "ort":
                _bench_ort(dense_path, result.onnx_path, inputs, report, threads=threads, blocks=blocks, warmup=warmup, per_layer=per_layer, tmp=out)
            else:
                _bench_tensorrt(dense_path, result.onnx_path, report, blocks=blocks)
    flops = result.report.totals()
    if flops.get("flops"):
        report.settings["flops"] = flops["flops"]
        report.settings["flops_on_zeros"] = flops["flops_on_zeros"]
    from graphprune._io import atomic_write_text

    if chart:
        try:
            save_chart(report, out / "bench.png")
            report.outputs["chart"] = str(out / "bench.png")
        except DependencyError as e:
            report.notes.append(str(e))
    report.outputs["json"] = str(out / "bench.json")
    atomic_write_text(out / "bench.json", json.dumps(report.to_dict(), indent=2, default=str))
    return report


def save_chart(report: BenchReport, path: str | Path, *, top: int = 20) -> Path:
    """End-to-end bars and the ``top`` slowest layers (dense vs pruned medians) as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise DependencyError("the bench chart needs matplotlib: pip install 'graphprune[plots]'") from e
    path = Path(path)
    layers = [r for r in sorted(report.layers, key=lambda r: -(r.dense_ms or 0.0)) if r.dense_ms is not None][:top]
    fig, axes = plt.subplots(1, 2, figsize=(13, max(3.5, 0.32 * len(layers) + 1.5)), gridspec_kw={"width_ratios": [1, 3]})
    ax = axes[0]
    e2e = report.end_to_end
    if e2e:
        keys = ["dense", "pruned"]
        med = [e2e[k]["median_ms"] for k in keys]
        mins = [e2e[k]["min_ms"] for k in keys]
        ax.bar(keys, med, color=["#7f7f7f", "#1f77b4"])
        ax.scatter(keys, mins, color="black", marker="_", s=400, label="min", zorder=3)
        ratio = report.ratio
        ax.set_title(f"end to end ({ratio:.2f}x)" if ratio else "end to end")
        ax.set_ylabel("ms (median; bar = median, tick = min)")
    ax = axes[1]
    if layers:
        ys = range(len(layers))
        d = [r.dense_ms or 0.0 for r in layers]
        p = [r.pruned_ms or 0.0 for r in layers]
        ax.barh([y - 0.2 for y in ys], d, height=0.4, color="#7f7f7f", label="dense")
        ax.barh([y + 0.2 for y in ys], p, height=0.4, color="#1f77b4", label="pruned")
        ax.set_yticks(list(ys))
        ax.set_yticklabels([r.name if len(r.name) <= 48 else "…" + r.name[-47:] for r in layers], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("ms (median)")
        ax.legend(loc="lower right")
        ax.set_title(f"slowest {len(layers)} layers")
    else:
        ax.axis("off")
    fig.suptitle(f"{report.model}: {report.pattern} on {report.runtime} — {report.settings.get('machine', '')}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- CLI -----------------------------------------------------------------------------------------
def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``graphprune``'s subparsers (handler: :func:`run_bench`)."""
    b = subparsers.add_parser("bench", help="dense vs pruned latency, end to end and per layer (table + PNG chart)")
    b.add_argument("model", help="a .pt2, TorchScript file, or package.module:callable")
    b.add_argument("--pattern", default=None, help="2:4 (default), 4:8, unstructured:0.9, channels:0.5, ...")
    b.add_argument("--runtime", choices=RUNTIMES, default="torch", help="where to time (default torch)")
    b.add_argument("--input-shape", action="append", default=[], metavar="SHAPE[:DTYPE[:HIGH]]",
                   help="example input shape, once per input, e.g. 1,3,224,224 or 1x128:int64:30522")
    b.add_argument("--config", type=Path, help="CompileConfig as JSON (--pattern overrides it)")
    b.add_argument("--trust-pickle", action="store_true", help="allow loading a whole pickled model (runs code from the file)")
    b.add_argument("-o", "--output", type=Path, default=None, help="output directory (default graphprune-out/NAME-bench)")
    b.add_argument("--blocks", type=int, default=7, help="alternating timed blocks per side (default 7)")
    b.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs (default 3)")
    b.add_argument("--threads", type=int, default=2, help="CPU threads for torch / onnxruntime (default 2)")
    b.add_argument("--no-per-layer", action="store_true", help="end to end only")
    b.add_argument("--no-sparse-forms", action="store_true", help="torch: time the folded model without CSR forms")
    b.add_argument("--max-rows", type=int, default=40, help="rows of the per-layer table to print")
    b.set_defaults(handler=run_bench)
    return b


def run_bench(args: argparse.Namespace) -> int:
    """CLI handler: load, bench, print the table and where the files went."""
    from graphprune.api import prepare_output_dir
    from graphprune.config import CompileConfig, parse_pattern
    from graphprune.inputs import load_model

    config = CompileConfig.from_json(args.config) if getattr(args, "config", None) else CompileConfig()
    if args.pattern:
        config = dataclasses.replace(config, pattern=parse_pattern(args.pattern))
    name = str(args.model)
    stem = name.rpartition(":")[2].replace(".", "_") if ":" in name and not Path(name).exists() else (Path(name).stem or "model")
    out = args.output or Path("graphprune-out") / f"{stem}-bench"
    prepare_output_dir(out, inputs=(Path(name),) if Path(name).exists() else ())
    print(f"graphprune: loading {name}", file=sys.stderr)
    loaded = load_model(name, trust_pickle=args.trust_pickle, input_shapes=args.input_shape)
    if loaded.kind == "onnx" or loaded.model is None or loaded.example_inputs is None:
        raise ConfigError(f"bench needs a PyTorch model (it prunes it first); {name} is {loaded.kind}")
    print(f"graphprune: pruning with {', '.join(map(str, config.pattern))} and timing on {args.runtime}", file=sys.stderr)
    rep = bench_model(
        loaded.model,
        loaded.example_inputs,
        config,
        runtime=args.runtime,
        out_dir=out,
        model_name=name,
        blocks=args.blocks,
        warmup=args.warmup,
        threads=args.threads,
        per_layer=not args.no_per_layer,
        sparse_forms=not args.no_sparse_forms,
        progress=True,
    )
    print(rep.table(args.max_rows))
    for v in rep.outputs.values():
        print(f"wrote:   {v}")
    return 0
