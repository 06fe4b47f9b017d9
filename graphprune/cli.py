"""``graphprune`` command line: argparse front end over the library (no logic of its own).

    graphprune compile MODEL [--pattern 2:4] [--input-shape ...] [--include/--exclude ...] [-o OUT]
    graphprune inspect MODEL            decisions only (what would be pruned, and why not)
    graphprune audit FILE.onnx [--pattern 2:4]
    graphprune bench MODEL [--runtime torch|ort|tensorrt]   dense vs pruned latency, table + chart

Every failure ends in one line on stderr and an exit code from :data:`graphprune.errors.EXIT_CODES`
(one handler, :func:`main`): 0 ok; 2 bad option/config; 3 bad input file; 4 unsupported model;
5 bad weights; 6 validation failed; 7 output not writable; 8 a pass failed or an internal error;
9 missing dependency; 130 Ctrl-C; 143 SIGTERM. ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from graphprune.errors import ConfigError, GraphPruneError, Terminated, ValidationError, exit_code_for, is_out_of_memory
from graphprune.io.staging import check_output_target, output_folder


def _version() -> str:
    from graphprune import __version__

    return __version__


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphprune", description="Pruning compiler for PyTorch models.")
    p.add_argument("--version", action="version", version=f"graphprune {_version()}")
    p.add_argument("-v", "--verbose", action="store_true", help="log each stage")
    p.add_argument("--debug", action="store_true", help="on an error, also print the traceback")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="on an error, also print the traceback")

    def model_args(sp: argparse.ArgumentParser) -> None:
        common(sp)
        sp.add_argument("model", help="a .pt2, TorchScript or .onnx file, or package.module:callable")
        sp.add_argument("--pattern", default=None,
                        help="2:4 (default), 4:8, unstructured:0.8, unstructured:0.8@global, channels:0.5, "
                             "heads:0.25,ffn:0.5, hidden:0.25 (RMSNorm streams); options after @ (see README)")
        sp.add_argument("--input-shape", action="append", default=[], metavar="SHAPE[:DTYPE[:HIGH]]",
                        help="example input shape, once per input, e.g. 1,3,224,224 or 2x16:int64:30522")
        sp.add_argument("--include", action="append", default=[], metavar="GLOB", help="only layers whose fqn matches")
        sp.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="leave matching layers dense")
        sp.add_argument("--op-type", action="append", default=[], metavar="TYPE",
                        help="only these op kinds: linear, conv, conv_transpose, hf_conv1d, matmul, mha")
        sp.add_argument("--override", action="append", default=[], metavar="GLOB=PATTERN",
                        help="per-layer pattern, e.g. '*lm_head*=dense' or '*.fc1=4:8'")
        sp.add_argument("--prune-tied", action="store_true", help="also prune weights shared by several modules")
        sp.add_argument("--permute", action="store_true",
                        help="permute coupled channels before N:M masks so they keep more magnitude")
        sp.add_argument("--permute-budget", type=float, default=None, metavar="SECONDS",
                        help="permutation search time per channel group (default 2)")
        sp.add_argument("--config", type=Path, help="CompileConfig as JSON (command-line options override it)")
        d = sp.add_argument_group("calibration and fidelity")
        d.add_argument("--calib", default=None, metavar="SOURCE",
                       help="calibration data: package.module:callable returning batches (tuples of positional inputs), "
                            "or a .npz / .safetensors file with one stacked tensor per input (first axis = samples)")
        d.add_argument("--calib-batch", type=int, default=None, metavar="N", help="samples per batch from a --calib/--eval file (8)")
        d.add_argument("--eval", default=None, metavar="SOURCE",
                       help="held-out data for the fidelity figure (default: a fifth of --calib held back, else the example inputs)")
        d.add_argument("--method", choices=["magnitude", "wanda", "sparsegpt"], default=None,
                       help="how N:M / unstructured masks are chosen (default: sparsegpt with --calib, else magnitude)")
        d.add_argument("--plan", type=Path, default=None, metavar="DIR",
                       help="apply a saved training-side plan (Plan.save folder) instead of computing masks")
        d.add_argument("--max-drift", type=float, default=None, metavar="D",
                       help="accuracy budget: leave the most sensitive layers dense until mean cosine to the dense model >= 1-D")
        d.add_argument("--min-cosine", type=float, default=None, metavar="C", help="accuracy budget as a mean cosine (instead of --max-drift)")
        e = sp.add_argument_group("export")
        e.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                       help="cast the model (and floating inputs) first; the ONNX keeps this dtype (default: the model's own)")
        e.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=None,
                       help="axis 0 of inputs and outputs dynamic in the ONNX and pt2 (default on where the model allows)")
        e.add_argument("--dynamic-axis", action="append", default=[], metavar="NAME:AXIS[=LABEL]",
                       help="another dynamic axis, e.g. input_ids:1=sequence")
        e.add_argument("--input-name", action="append", default=[], metavar="NAME",
                       help="the model's forward argument for each example input, in order (keyword-only inputs)")
        sp.add_argument("--trust-pickle", action="store_true",
                        help="allow unpickling (a whole pickled model, pickled entries of a .pt2); it runs code from the file")

    c = sub.add_parser("compile", help="prune, export ONNX, audit and prove parity")
    model_args(c)
    c.add_argument("-o", "--output", type=output_folder, default=None,
                   help="output folder (default graphprune-out/NAME); replaced as a whole, only when every check passed")
    c.add_argument("--form", choices=["folded", "masked"], default=None, help="form of the saved PyTorch model")
    c.add_argument("--no-validate", action="store_true", help="skip the onnxruntime parity check")
    c.add_argument("--dump-dir", type=output_folder, default=None, help="write the module before/after each pass")
    c.add_argument("--max-rows", type=int, default=60, help="rows of the per-layer table to print")
    c.add_argument("--target", choices=["onnx", "cuda"], default=None,
                   help="onnx (default); cuda: also write OUT/cuda, the 2:4 artifact for NVIDIA GPUs, decided by measurement "
                        "on this machine's GPU (load it with graphprune.load(OUT/'cuda', constructor, device='cuda'))")
    c.add_argument("--cuda-dtype", choices=["float16", "bfloat16"], default=None, help="dtype of the CUDA artifact (float16)")
    c.add_argument("--cuda-mode", choices=["graph", "eager"], default=None,
                   help="execution mode the CUDA artifact is measured and run in (graph: CUDA-graph replay, default)")
    c.add_argument("--shapes", default=None, metavar="N[,N...]",
                   help="more token counts (rows of a layer's input) to decide 2:4 for, e.g. 4 for decode; each is its own decision")

    i = sub.add_parser("inspect", help="show every candidate layer and its decision; writes nothing")
    model_args(i)
    i.add_argument("--json", action="store_true", help="print decisions as JSON")

    from graphprune.bench import add_bench_parser

    common(add_bench_parser(sub))

    a = sub.add_parser("audit", help="check the sparsity pattern of every weight in an ONNX file")
    common(a)
    a.add_argument("onnx", type=Path)
    a.add_argument("--pattern", default=None, help="N:M pattern to check, e.g. 2:4")
    a.add_argument("--json", action="store_true")
    return p


def _config(args: argparse.Namespace) -> Any:
    """The CompileConfig: ``--config`` JSON, then the command-line options over it (one type check:
    ``CompileConfig.__post_init__``)."""
    import dataclasses

    from graphprune.config import CompileConfig

    base = CompileConfig.from_json(args.config) if getattr(args, "config", None) else CompileConfig()
    kw: dict[str, Any] = {}
    if args.pattern:
        kw["pattern"] = args.pattern
    if args.include:
        kw["include"] = tuple(args.include)
    if args.exclude:
        kw["exclude"] = tuple(args.exclude)
    if args.op_type:
        kw["op_types"] = tuple(args.op_type)
    if args.prune_tied:
        kw["prune_tied"] = True
    if getattr(args, "permute", False):
        kw["permute"] = True
    if getattr(args, "permute_budget", None) is not None:
        kw["permute_budget_s"] = args.permute_budget
    if args.override:
        ov: dict[str, Any] = dict(base.overrides)
        for item in args.override:
            glob, sep, pat = item.partition("=")
            if not sep or not glob:
                raise ConfigError(f"--override {item!r} must look like GLOB=PATTERN (e.g. '*lm_head*=dense')")
            ov[glob] = pat
        kw["overrides"] = ov
    if getattr(args, "form", None):
        kw["form"] = args.form
    if getattr(args, "no_validate", False):
        kw["validate"] = False
    for name in ("target", "cuda_dtype", "cuda_mode"):
        if getattr(args, name, None):
            kw[name] = getattr(args, name)
    if getattr(args, "shapes", None):
        from graphprune.bench import parse_token_counts

        kw["token_counts"] = parse_token_counts(args.shapes)
    for name in ("method", "calib_batch", "max_drift", "min_cosine", "dtype", "dynamic_batch"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    if getattr(args, "dynamic_axis", None):
        from graphprune.runtime.export import ExportOptions

        axes: dict[str, dict[int, str]] = {k: dict(v) for k, v in base.dynamic_axes.items()}
        for spec in args.dynamic_axis:
            for name, dims in ExportOptions.parse_dynamic_axis(spec).items():
                axes.setdefault(name, {}).update(dims)
        kw["dynamic_axes"] = axes
    if getattr(args, "input_name", None):
        kw["input_names"] = tuple(args.input_name)
    return dataclasses.replace(base, **kw) if kw else base


def _data_args(args: argparse.Namespace) -> dict[str, Any]:
    """``calibration`` / ``evaluation`` sources and the ``plan`` for compile and inspect."""
    plan = None
    if getattr(args, "plan", None) is not None:
        from graphprune.plan import Plan

        plan = Plan.load(args.plan)
    return {"calibration": args.calib, "evaluation": args.eval, "plan": plan}


def _require_element_pattern(config: Any, source: str) -> Any:
    """ONNX inputs are pruned at the initializer level: element-wise patterns only (compile and inspect)."""
    if config.structured_patterns:
        raise ConfigError(
            f"{source} is ONNX, which can only be pruned element-wise (N:M or unstructured); the structured "
            f"pattern(s) {', '.join(map(str, config.structured_patterns))} need a PyTorch model (.pt2, factory)"
        )
    if config.element_pattern is None:
        raise ConfigError(f"{source} is ONNX: give an element-wise pattern (N:M or unstructured)")
    return config.element_pattern


def _refuse_torch_only(args: argparse.Namespace, config: Any, source: str) -> None:
    """Options that need the PyTorch model (calibration, fidelity, plans, casts) on an ONNX input: exit 2."""
    given = [flag for flag, v in (
        ("--calib", getattr(args, "calib", None)), ("--eval", getattr(args, "eval", None)),
        ("--plan", getattr(args, "plan", None)), ("--max-drift", config.max_drift), ("--min-cosine", config.min_cosine),
        ("--dtype", config.dtype),
        ("--method", config.method if config.method not in (None, "magnitude") else None),
    ) if v is not None]
    if given:
        raise ConfigError(
            f"{source} is ONNX, pruned by magnitude at the initializer level; {', '.join(given)} need the PyTorch model "
            "(.pt2, TorchScript or package.module:callable)"
        )


def _default_name(source: str) -> str:
    if ":" in source and not Path(source).exists():
        return source.rpartition(":")[2].replace(".", "_")
    return Path(source).stem or "model"


def _input_files(args: argparse.Namespace, model: str) -> tuple[Path, ...]:
    """The files a run reads: the output folder must never resolve to one of them."""
    files = [Path(model)] if Path(model).exists() else []
    for name in ("config", "plan"):
        if getattr(args, name, None) is not None:
            files.append(Path(getattr(args, name)))
    for name in ("calib", "eval"):  # data files (a module:callable source is not a file)
        src = getattr(args, name, None)
        if src and Path(src).exists():
            files.append(Path(src))
    return tuple(files)


def _cmd_compile(args: argparse.Namespace) -> int:
    from graphprune.api import compile as gp_compile
    from graphprune.io.loaders import load_model
    from graphprune.io.staging import staged_output

    config = _config(args)
    out = args.output or Path("graphprune-out") / _default_name(args.model)
    if args.dump_dir is not None:
        check_output_target(args.dump_dir, inputs=_input_files(args, args.model), option="--dump-dir")
    with staged_output(out, inputs=_input_files(args, args.model)) as stage:
        print(f"graphprune: loading {args.model}", file=sys.stderr)
        loaded = load_model(args.model, trust_pickle=args.trust_pickle, input_shapes=args.input_shape)
        if loaded.kind == "onnx":
            _refuse_torch_only(args, config, args.model)
            rep = _compile_onnx(loaded.path, stage, config)  # type: ignore[arg-type]
        else:
            assert loaded.model is not None and loaded.example_inputs is not None
            print(f"graphprune: compiling ({loaded.kind}) with pattern {', '.join(map(str, config.pattern))}", file=sys.stderr)
            # the loaded model is the CLI's own: hand it over (copy=False), one model's worth of memory less
            result = gp_compile(loaded.model, loaded.example_inputs, config, output_dir=out, progress=True,
                                dump_dir=args.dump_dir, model_name=args.model, copy=False, **_data_args(args))
            rep = result.report
    if loaded.kind == "onnx":
        _print_onnx_report(rep, args.max_rows)
    else:
        _print_report(rep, result, config, args.max_rows)
    return 0


def _print_report(rep: Any, result: Any, config: Any, max_rows: int) -> None:
    if rep.structured:
        from graphprune.report import structured_table

        print(structured_table(rep.structured, max_rows))
        print()
    if config.element_pattern is not None or not rep.structured:
        print(rep.table(max_rows))
        print()
    for note in rep.notes:
        print(f"note:    {note}")
    print(f"capture: {rep.capture.get('method')}" + "".join(
        f"  ({t['method']} failed: {t['error'][:120]})" for t in rep.capture.get("tried", []) if not t["ok"]
    ))
    if rep.audit:
        print(f"audit:   {'OK' if rep.audit['ok'] else 'FAILED'} - {rep.audit['summary']}")
    if rep.parity:
        p = rep.parity
        print(f"parity:  {'OK' if p['ok'] else 'FAILED'} - onnxruntime vs pruned PyTorch: max |diff| {p['max_abs']:.3g}, "
              f"max rel {p['max_rel']:.3g}, min cosine {p.get('cosine_min', float('nan')):.6f} over {p['n_outputs']} output(s)")
    if result.fidelity is not None:
        print(f"quality: {result.fidelity.summary()}")
        for note in result.fidelity.notes:
            print(f"         {note}")
    mvf = result.validation.get("masked_vs_folded")
    if mvf:
        print(f"forms:   masked == folded: {'OK' if mvf['ok'] else 'FAILED'} (max |diff| {mvf['max_abs']:.3g})")
    print("time:    " + ", ".join(f"{k} {v:.2f}s" for k, v in rep.timings.items()))
    for v in rep.outputs.values():
        print(f"wrote:   {v}")


def _compile_onnx(path: Path, stage: Any, config: Any) -> Any:
    from graphprune.io.checks import check_finite_onnx
    from graphprune.passes.onnx.prune_initializers import prune_onnx
    from graphprune.report import CompileReport

    pattern = _require_element_pattern(config, str(path))
    check_finite_onnx(path)
    res = prune_onnx(path, stage.file("model.onnx"), pattern, include=config.include, exclude=config.exclude)
    rep = CompileReport(model=str(path), config=config.to_dict(), decisions=list(res.decisions))
    rep.capture = {"method": "onnx", "tried": []}
    rep.audit = res.audit.to_dict()
    rep.parity = res.parity.to_dict() if res.parity is not None else None
    rep.outputs = {"onnx": str(stage.final("model.onnx")), "report": str(stage.final("report.json"))}
    ok = bool(rep.audit and rep.audit.get("ok")) and bool(not rep.parity or rep.parity["ok"])
    if not ok:
        err = ValidationError(
            f"the pruned ONNX of {path} fails its "
            + ("audit" if not (rep.audit and rep.audit.get("ok")) else "parity check against the original ONNX")
        )
        err.report = rep  # type: ignore[attr-defined]
        raise err
    rep.to_json(stage.file("report.json"))
    return rep


def _print_onnx_report(rep: Any, max_rows: int) -> None:
    print(rep.table(max_rows))
    print(f"audit:   {'OK' if rep.audit and rep.audit.get('ok') else 'FAILED'}")
    if rep.parity:
        print(f"parity:  {'OK' if rep.parity['ok'] else 'FAILED'} - pruned ONNX vs original ONNX with the same masks, "
              f"max |diff| {rep.parity['max_abs']:.3g}")
    for v in rep.outputs.values():
        print(f"wrote:   {v}")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from graphprune.api import inspect_model
    from graphprune.io.loaders import load_model

    config = _config(args)
    loaded = load_model(args.model, trust_pickle=args.trust_pickle, input_shapes=args.input_shape)
    if loaded.kind == "onnx":
        from graphprune.runtime.audit import audit_onnx

        _require_element_pattern(config, args.model)
        _refuse_torch_only(args, config, args.model)
        print(audit_onnx(loaded.path).summary())  # type: ignore[arg-type]
        return 0
    assert loaded.model is not None and loaded.example_inputs is not None
    rep = inspect_model(loaded.model, loaded.example_inputs, config, model_name=args.model, **_data_args(args))
    if args.json:
        d = rep.to_dict()
        print(json.dumps({"decisions": d["decisions"], "structured": d["structured"]} if rep.structured else d["decisions"], indent=2))
    else:
        if rep.structured:
            from graphprune.report import structured_table

            print(structured_table(rep.structured))
            print()
        print(rep.table())
        for note in rep.notes:
            print(f"note:    {note}")
        print(f"capture: {rep.capture.get('method')}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from graphprune.config import SemiStructured, parse_pattern
    from graphprune.runtime.audit import audit_onnx

    n = m = None
    if args.pattern:
        pat = parse_pattern(args.pattern)
        if len(pat) != 1 or not isinstance(pat[0], SemiStructured):
            raise ConfigError(f"--pattern {args.pattern!r}: audit checks N:M patterns, e.g. 2:4")
        n, m = pat[0].n, pat[0].m
    rep = audit_onnx(args.onnx, n=n, m=m)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2, default=str))
    else:
        print(rep.summary())
    return 0 if rep.ok else 6


# ---- the one error handler -----------------------------------------------------------------------
def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    return lines[0] + (" (more with --debug)" if len(lines) > 1 else "")


def _message(e: BaseException) -> str:
    """One line for any exception (see :func:`graphprune.errors.exit_code_for` for its exit code)."""
    if isinstance(e, GraphPruneError):
        text = _one_line(str(e))
        where = getattr(e, "failed_report", None)
        return text + (f" (report: {where})" if where else "")
    if isinstance(e, KeyboardInterrupt):
        return "interrupted; the output folder was left as it was"
    if isinstance(e, Terminated):
        return "terminated (SIGTERM); the output folder was left as it was"
    if is_out_of_memory(e):
        return (f"out of memory ({type(e).__name__}: {_one_line(str(e))[:200]}); this is not a graphprune bug: "
                "use smaller example inputs or a machine with more memory")
    if exit_code_for(e) == 7:
        assert isinstance(e, OSError)
        return f"cannot write {e.filename or 'the output'}: {e.strerror}; free space or choose another output folder"
    if isinstance(e, SystemExit):
        return f"internal error: something called sys.exit({e.code!r}) during the run; please report it with the command line"
    return (f"internal error: {type(e).__name__}: {_one_line(str(e))[:300]}; please report it with the command line "
            "and the output of --debug (which shows the traceback)")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (main() may run many times in one process)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _log_to_stderr() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    """While the command runs, SIGTERM raises :class:`Terminated` (so staging folders are removed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (never raises, never prints a traceback unless --debug)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0), usage errors (2): argparse has printed them
        return e.code if isinstance(e.code, int) else 2
    _log_to_stderr()
    # stage progress ("capture ...", "export ...") goes to stderr; -v adds the details
    logging.getLogger("graphprune").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    handlers = {"compile": _cmd_compile, "inspect": _cmd_inspect, "audit": _cmd_audit}
    try:
        with _sigterm_as_exception():
            if args.command == "bench":
                from graphprune.bench import run_bench

                return run_bench(args)
            return handlers[args.command](args)
    except BrokenPipeError:  # the reader went away (`graphprune inspect --json | head`): not an error
        _silence_closed_streams()
        return 0
    except BaseException as e:  # the one place that turns every exception into an exit code
        report = getattr(e, "report", None)
        if report is not None and hasattr(report, "table"):
            try:
                print(report.table(getattr(args, "max_rows", 60)))
            except Exception:
                pass
        try:
            print(f"graphprune {args.command}: error: {_message(e)}", file=sys.stderr)
            if getattr(args, "debug", False):
                traceback.print_exception(e)
        except BrokenPipeError:
            _silence_closed_streams()
        return exit_code_for(e)


def _silence_closed_streams() -> None:
    """Point stdout/stderr at /dev/null once their reader has gone, so Python's flush at exit stays quiet
    (the remedy the Python docs give for SIGPIPE)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):
                pass


if __name__ == "__main__":
    raise SystemExit(main())
