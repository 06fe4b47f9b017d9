"""``graphprune bench MODEL``: dense vs pruned latency on one runtime, end to end and per layer.

The model is pruned with :func:`graphprune.compile` (the pattern options of ``graphprune compile``),
then both versions are timed on the same example inputs, in the same process, as
BENCHMARKING.md asks: untimed warm-up, alternating blocks (dense, pruned, dense, ...), min and
median per side, the ratio of medians (``dense / pruned``: > 1 means the pruned model is faster).

Runtimes:

- ``torch``: PyTorch eager on CPU (``torch.set_num_threads(threads)``). The pruned model gets the
  runtime forms of :mod:`graphprune.passes.convert_sparse_forms` (CSR where it measures faster;
  off with ``sparse_forms=False``). Per layer: every Linear/Conv module present in both models is
  timed on its real input (recorded with forward hooks), dense layer vs pruned layer.
- ``ort``: onnxruntime CPUExecutionProvider, ``intra_op_num_threads=threads``,
  ``inter_op_num_threads=1``, ``ORT_ENABLE_ALL``; **one session alive at a time** (each block
  creates a session, warms it up, times it and deletes it). Per layer: a separate profiling run
  of each model (onnxruntime's profiler; median kernel time per node over the runs), matched by
  node name.
- ``torch`` with ``device="cuda"``: the model is pruned on the CPU, then the dense and the pruned
  model move to the GPU in ``dtype`` (fp16 by default); the pruned one gets its 2:4 forms from the
  pre-flight in ``mode`` (``"graph"`` by default: dense vs 2:4 timed as CUDA-graph replays, per
  token count: the real input's plus ``token_counts``) and both are timed in that same mode, end to
  end and per layer. The GPU model, driver, CUDA and cuSPARSELt versions, dtype and mode go into the
  report's settings.
- ``tensorrt``: engines from the dense and the pruned ONNX (the pruned one with
  ``SPARSE_WEIGHTS``), fp16, timed with CUDA events; per layer: which layers picked sparse tactics
  (engine inspector and build log). Needs TensorRT and a GPU (DependencyError otherwise).

Outputs next to the compile report in ``out_dir``: ``bench.json`` and ``bench.png`` (matplotlib,
Agg backend: end-to-end bars and the slowest layers, dense vs pruned).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from graphprune.bench.report import BenchReport, LayerTiming, save_chart
from graphprune.bench.timing import _bench_ort, _bench_tensorrt, _bench_torch, _torch_threads, machine_info
from graphprune.errors import ConfigError, DependencyError
from graphprune.io.staging import StagedOutput, output_folder

__all__ = ["BenchReport", "LayerTiming", "add_bench_parser", "bench_model", "parse_token_counts", "run_bench", "save_chart"]

RuntimeT = Literal["torch", "ort", "tensorrt"]
RUNTIMES: tuple[str, ...] = ("torch", "ort", "tensorrt")


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
    device: str = "cpu",
    mode: Literal["eager", "graph"] = "graph",
    dtype: torch.dtype | None = None,
    token_counts: tuple[int, ...] = (),
    compiled: str | Path | None = None,
) -> BenchReport:
    """Prune ``model`` with ``config`` (a CompileConfig; 2:4 by default) and time dense vs pruned on
    ``runtime``; writes ``bench.json`` (and ``bench.png``) into ``out_dir``. The caller's model is
    not modified. ``device="cuda"`` (runtime ``torch`` only): time on the GPU in ``dtype`` (fp16
    default) and ``mode`` (``"graph"``: CUDA-graph replay; ``"eager"``), deciding 2:4 per layer
    for the real token count and ``token_counts``; ``mode`` and the rest are ignored on the CPU.
    ``compiled``: a folder ``graphprune compile`` wrote: time its ``pruned.pt2`` (runtime torch) or
    ``model.onnx`` (ort, tensorrt) against ``model`` instead of pruning again (``config`` is then unused)."""
    from graphprune.config import as_config
    from graphprune.io.staging import staged_output

    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if blocks < 1 or warmup < 0 or threads < 1:
        raise ConfigError(f"blocks must be >= 1, warmup >= 0 and threads >= 1 (got {blocks}, {warmup}, {threads})")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        if runtime != "torch":
            raise ConfigError(f"device='cuda' times the torch runtime (the 2:4 CUDA runtime); got runtime={runtime!r}")
        if mode not in ("eager", "graph"):
            raise ConfigError(f"mode must be 'eager' or 'graph', got {mode!r}")
        if dtype is not None and dtype not in (torch.float16, torch.bfloat16):
            raise ConfigError(f"dtype for device='cuda' must be torch.float16 or torch.bfloat16 (the 2:4 kernels), got {dtype}")
        if not torch.cuda.is_available():
            raise DependencyError("bench device='cuda' needs a CUDA GPU (torch.cuda.is_available() is False)")
    if runtime == "tensorrt":
        from graphprune.runtime.tensorrt import require_tensorrt

        require_tensorrt()  # fail before compiling anything
    config = as_config(config)
    done = _compiled_outputs(Path(compiled), runtime) if compiled is not None else None
    with staged_output(out_dir, inputs=done.inputs if done else ()) as stage:  # bench.json, the chart, dense.onnx and compile's files: one set
        return _bench_into(stage, model, tuple(example_inputs), config, runtime=runtime, model_name=model_name, blocks=blocks,
                           warmup=warmup, threads=threads, per_layer=per_layer, sparse_forms=sparse_forms, chart=chart,
                           progress=progress, device=device, mode=mode, dtype=dtype, token_counts=token_counts, compiled=done)


@dataclass(frozen=True)
class _Compiled:
    """What ``graphprune compile`` left in a folder, as bench reads it."""

    folder: Path
    pruned: Path  # pruned.pt2 (torch) or model.onnx (ort, tensorrt)
    report: dict[str, Any]

    @property
    def inputs(self) -> tuple[Path, ...]:
        return (self.folder, self.pruned)


def _compiled_outputs(folder: Path, runtime: str) -> _Compiled:
    """Check a compile output folder before any work: the file the runtime times and its report.json."""
    from graphprune.errors import InputError

    if not folder.is_dir():
        raise InputError(f"--compiled {folder} is not a folder; give the -o folder of a graphprune compile run")
    name = "pruned.pt2" if runtime == "torch" else "model.onnx"
    for need in (name, "report.json"):
        if not (folder / need).is_file():
            raise InputError(f"--compiled {folder} has no {need}: it is not the output of a successful graphprune compile"
                             + (" (the torch runtime times pruned.pt2)" if need == "pruned.pt2" else ""))
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"--compiled {folder}/report.json cannot be read: {e}") from e
    if not isinstance(report, dict):
        raise InputError(f"--compiled {folder}/report.json is not a graphprune compile report")
    return _Compiled(folder, folder / name, report)


def _bench_into(stage: StagedOutput, model: nn.Module, inputs: tuple[Any, ...], config: Any, *, runtime: str,
                model_name: str | None, blocks: int, warmup: int, threads: int, per_layer: bool, sparse_forms: bool,
                chart: bool, progress: bool, device: str, mode: Literal["eager", "graph"], dtype: torch.dtype | None,
                token_counts: tuple[int, ...], compiled: _Compiled | None = None) -> BenchReport:
    from graphprune.api import compile as gp_compile
    from graphprune.api import copy_model

    out = stage.target
    cfg = config if runtime != "torch" else dataclasses.replace(config, export_onnx=False)
    pattern = ", ".join(map(str, config.pattern))
    if compiled is not None:
        from graphprune.config import CompileConfig
        from graphprune.errors import GraphPruneError

        try:
            pattern = ", ".join(map(str, CompileConfig.from_dict(compiled.report.get("config") or {}).pattern))
        except (GraphPruneError, TypeError, ValueError, AttributeError):
            pattern = "as compiled (report.json's config unreadable)"
    report = BenchReport(model=model_name or type(model).__name__, runtime=runtime, pattern=pattern)
    report.settings = {**machine_info(threads), "blocks": blocks, "warmup": warmup}
    with _torch_threads(threads):
        if compiled is None:
            result = gp_compile(model, inputs, cfg, output_dir=out, progress=progress, model_name=report.model)
            report.outputs["report"] = str(stage.final("report.json"))
            totals = result.report.totals()
            pruned_model: nn.Module | None = result.model
            pruned_onnx: Path | None = result.onnx_path
        else:  # time what compile already wrote; nothing is pruned again
            report.notes.append(f"pruned side: {compiled.pruned} (written by graphprune compile), not pruned again")
            totals = compiled.report.get("totals") or {}
            pruned_model = _load_compiled(compiled.pruned) if runtime == "torch" else None
            pruned_onnx = compiled.pruned if runtime != "torch" else None
        dense = copy_model(model).eval()
        if runtime == "torch" and device == "cuda":
            assert pruned_model is not None
            _bench_on_cuda(dense, pruned_model.eval(), inputs, report, dtype=dtype or torch.float16, mode=mode,
                           token_counts=token_counts, sparse_forms=sparse_forms, blocks=blocks, warmup=warmup, per_layer=per_layer)
        elif runtime == "torch":
            assert pruned_model is not None
            pruned = pruned_model.eval()
            if sparse_forms:
                from graphprune.passes.convert_sparse_forms import apply_sparse_forms

                forms = apply_sparse_forms(pruned, inputs)
                report.forms = [lf.to_dict() for lf in forms.layers]
                report.notes.append(f"sparse runtime forms: {len(forms.converted)} of {len(forms.layers)} Linear layers converted (by measurement)")
            report.notes.append(f"PyTorch eager on CPU, torch.set_num_threads({threads})")
            with torch.no_grad():
                _bench_torch(dense, pruned, inputs, report, blocks=blocks, warmup=warmup, per_layer=per_layer)
        else:
            from graphprune.runtime.export import export_onnx

            if pruned_onnx is None:
                raise ConfigError("the ort and tensorrt runtimes need the ONNX export (export_onnx=True in the config)")
            dense_path = stage.file("dense.onnx")
            pruned_path = stage.file("model.onnx") if compiled is None else pruned_onnx
            export_onnx(dense, inputs, dense_path, opset=config.opset)
            report.outputs["dense_onnx"] = str(stage.final("dense.onnx"))
            report.outputs["pruned_onnx"] = str(pruned_onnx)
            if runtime == "ort":
                _bench_ort(dense_path, pruned_path, inputs, report, threads=threads, blocks=blocks, warmup=warmup, per_layer=per_layer, tmp=stage.path)
            else:
                _bench_tensorrt(dense_path, pruned_path, report, blocks=blocks)
    if totals.get("flops"):
        report.settings["flops"] = totals["flops"]
        report.settings["flops_on_zeros"] = totals.get("flops_on_zeros")
    from graphprune.io.files import atomic_write_text

    if chart:
        try:
            save_chart(report, stage.file("bench.png"))
            report.outputs["chart"] = str(stage.final("bench.png"))
        except DependencyError as e:
            report.notes.append(str(e))
    report.outputs["json"] = str(stage.final("bench.json"))
    atomic_write_text(stage.file("bench.json"), json.dumps(report.to_dict(), indent=2, default=str))
    return report


def _load_compiled(path: Path) -> nn.Module:
    """``pruned.pt2`` through the safe .pt2 reader (nothing unpickled), as a module."""
    from graphprune.io.loaders import load_model

    loaded = load_model(str(path), trust_pickle=False)
    if loaded.model is None:
        raise ConfigError(f"{path} holds no PyTorch program to time")
    return loaded.model


def _bench_on_cuda(
    dense: nn.Module,
    pruned: nn.Module,
    inputs: tuple[Any, ...],
    report: BenchReport,
    *,
    dtype: torch.dtype,
    mode: str,
    token_counts: tuple[int, ...],
    sparse_forms: bool,
    blocks: int,
    warmup: int,
    per_layer: bool,
) -> None:
    from graphprune.bench.timing import _bench_cuda

    def move(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            return t.to("cuda", dtype) if t.is_floating_point() else t.to("cuda")
        return t

    dense = dense.to("cuda", dtype)
    pruned = pruned.to("cuda", dtype)
    cuda_inputs = tuple(move(t) for t in inputs)
    report.settings.update({"device": "cuda", "dtype": str(dtype).removeprefix("torch."), "mode": mode})
    if sparse_forms:
        from graphprune.passes.convert_sparse_forms import SparseFormsConfig, apply_sparse_forms

        forms = apply_sparse_forms(pruned, cuda_inputs, SparseFormsConfig(mode=mode, token_counts=tuple(token_counts)))  # type: ignore[arg-type]
        report.forms = [lf.to_dict() for lf in forms.layers]
        report.notes.append(f"2:4 runtime forms: {len(forms.converted)} of {len(forms.layers)} Linear layers converted (measured in {mode} mode)")
        report.notes.extend(forms.notes)
    with torch.no_grad():
        _bench_cuda(dense, pruned, cuda_inputs, report, mode=mode, blocks=blocks, warmup=warmup, per_layer=per_layer)


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
    b.add_argument("-o", "--output", type=output_folder, default=None, help="output directory (default graphprune-out/NAME-bench)")
    b.add_argument("--blocks", type=int, default=7, help="alternating timed blocks per side (default 7)")
    b.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs (default 3)")
    b.add_argument("--threads", type=int, default=2, help="CPU threads for torch / onnxruntime (default 2)")
    b.add_argument("--no-per-layer", action="store_true", help="end to end only")
    b.add_argument("--no-sparse-forms", action="store_true", help="torch: time the folded model without CSR forms")
    b.add_argument("--max-rows", type=int, default=40, help="rows of the per-layer table to print")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: time the 2:4 CUDA runtime on the GPU (torch runtime)")
    b.add_argument("--mode", choices=("graph", "eager"), default="graph", help="cuda: execution mode timed (default graph = CUDA-graph replay)")
    b.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16", help="cuda: model dtype (default fp16)")
    b.add_argument("--shapes", default="", metavar="TOKENS[,TOKENS...]",
                   help="cuda: more token counts (rows of a layer's input) to decide 2:4 for, e.g. 4 for a batch-4 decode step")
    b.add_argument("--compiled", type=Path, default=None, metavar="DIR",
                   help="time what `graphprune compile ... -o DIR` wrote (pruned.pt2, or model.onnx for ort/tensorrt) "
                        "against MODEL instead of pruning again")
    b.set_defaults(handler=run_bench)
    return b


def parse_token_counts(text: str) -> tuple[int, ...]:
    """``"4,4096"`` -> ``(4, 4096)``; ConfigError naming ``--shapes`` for anything else."""
    out: list[int] = []
    for part in (p.strip() for p in str(text or "").split(",")):
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(f"--shapes: {part!r} is not a token count (an int >= 1); e.g. --shapes 4,4096")
        out.append(int(part))
    return tuple(out)


def run_bench(args: argparse.Namespace) -> int:
    """CLI handler: load, bench, print the table and where the files went."""
    from graphprune.api import prepare_output_dir
    from graphprune.config import CompileConfig, parse_pattern
    from graphprune.io.loaders import load_model

    config = CompileConfig.from_json(args.config) if getattr(args, "config", None) else CompileConfig()
    if args.pattern:
        config = dataclasses.replace(config, pattern=parse_pattern(args.pattern))
    name = str(args.model)
    stem = name.rpartition(":")[2].replace(".", "_") if ":" in name and not Path(name).exists() else (Path(name).stem or "model")
    out = args.output or Path("graphprune-out") / f"{stem}-bench"
    compiled = getattr(args, "compiled", None)
    read = _compiled_outputs(compiled, args.runtime).inputs if compiled is not None else ()  # checked before loading
    prepare_output_dir(out, inputs=((Path(name),) if Path(name).exists() else ()) + read)
    print(f"graphprune: loading {name}", file=sys.stderr)
    loaded = load_model(name, trust_pickle=args.trust_pickle, input_shapes=args.input_shape)
    if loaded.kind == "onnx" or loaded.model is None or loaded.example_inputs is None:
        raise ConfigError(f"bench needs a PyTorch model (it prunes it first); {name} is {loaded.kind}")
    what = f"timing {compiled} (compiled)" if compiled else f"pruning with {', '.join(map(str, config.pattern))} and timing"
    print(f"graphprune: {what} on {args.runtime}", file=sys.stderr)
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
        device=getattr(args, "device", "cpu"),
        mode=getattr(args, "mode", "graph"),
        dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[getattr(args, "dtype", "fp16")],
        token_counts=parse_token_counts(getattr(args, "shapes", "")),
        compiled=compiled,
    )
    print(rep.table(args.max_rows))
    for v in rep.outputs.values():
        print(f"wrote:   {v}")
    return 0
