"""``graphprune`` command line: argparse front end over the library (no logic of its own).

    graphprune compile MODEL [--pattern 2:4] [--input-shape ...] [--include/--exclude ...] [-o OUT]
    graphprune inspect MODEL            decisions only (what would be pruned, and why not)
    graphprune audit FILE.onnx [--pattern 2:4]
    graphprune bench MODEL [--runtime torch|ort|tensorrt]   dense vs pruned latency, table + chart

Exit codes: 0 ok; 2 bad option/config; 3 bad input file; 4 unsupported model; 5 bad weights;
6 validation failed; 7 output not writable; 8 a pass failed; 9 missing dependency.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from graphprune.errors import ConfigError, GraphPruneError


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphprune", description="Pruning compiler for PyTorch models.")
    p.add_argument("-v", "--verbose", action="store_true", help="log each stage")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("model", help="a .pt2, TorchScript or .onnx file, or package.module:callable")
        sp.add_argument("--pattern", default=None, help="2:4 (default), 4:8, unstructured:0.8, channels:0.5, heads:0.25,ffn:0.5, hidden:0.25 (RMSNorm streams)")
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
        sp.add_argument("--trust-pickle", action="store_true",
                        help="allow loading a whole pickled model (.pt); unpickling runs code from the file")

    c = sub.add_parser("compile", help="prune, export ONNX, audit and prove parity")
    model_args(c)
    c.add_argument("-o", "--output", type=Path, default=None, help="output directory (default graphprune-out/NAME)")
    c.add_argument("--form", choices=["folded", "masked"], default=None, help="form of the saved PyTorch model")
    c.add_argument("--no-validate", action="store_true", help="skip the onnxruntime parity check")
    c.add_argument("--dump-dir", type=Path, default=None, help="write the module before/after each pass")
    c.add_argument("--max-rows", type=int, default=60, help="rows of the per-layer table to print")

    i = sub.add_parser("inspect", help="show every candidate layer and its decision; writes nothing")
    model_args(i)
    i.add_argument("--json", action="store_true", help="print decisions as JSON")

    from graphprune.bench import add_bench_parser

    add_bench_parser(sub)

    a = sub.add_parser("audit", help="check the sparsity pattern of every weight in an ONNX file")
    a.add_argument("onnx", type=Path)
    a.add_argument("--pattern", default=None, help="N:M pattern to check, e.g. 2:4")
    a.add_argument("--json", action="store_true")
    return p


def _config(args: argparse.Namespace) -> Any:
    from graphprune.config import CompileConfig, parse_pattern

    base = CompileConfig.from_json(args.config) if getattr(args, "config", None) else CompileConfig()
    kw: dict[str, Any] = {}
    if args.pattern:
        kw["pattern"] = parse_pattern(args.pattern)
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
        ov = dict(base.overrides)
        for item in args.override:
            glob, sep, pat = item.partition("=")
            if not sep or not glob:
                raise ConfigError(f"--override {item!r} must look like GLOB=PATTERN (e.g. '*lm_head*=dense')")
            ov[glob] = None if pat.strip().lower() in ("dense", "none") else parse_pattern(pat)[0]
        kw["overrides"] = ov
    if getattr(args, "form", None):
        kw["form"] = args.form
    if getattr(args, "no_validate", False):
        kw["validate"] = False
    if not kw:
        return base
    d = base.to_dict()
    d.update({k: v for k, v in kw.items() if k not in ("pattern", "overrides")})
    cfg = CompileConfig.from_dict({k: v for k, v in d.items() if k not in ("pattern", "overrides")})
    import dataclasses

    return dataclasses.replace(
        cfg, pattern=kw.get("pattern", base.pattern), overrides=kw.get("overrides", base.overrides)
    )


def _default_name(source: str) -> str:
    if ":" in source and not Path(source).exists():
        return source.rpartition(":")[2].replace(".", "_")
    return Path(source).stem or "model"


def _cmd_compile(args: argparse.Namespace) -> int:
    from graphprune.api import compile as gp_compile
    from graphprune.api import prepare_output_dir
    from graphprune.inputs import load_model

    config = _config(args)
    out = args.output or Path("graphprune-out") / _default_name(args.model)
    src_path = Path(args.model)
    inputs = (src_path,) if src_path.exists() else ()
    prepare_output_dir(out, inputs=inputs)
    print(f"graphprune: loading {args.model}", file=sys.stderr)
    loaded = load_model(args.model, trust_pickle=args.trust_pickle, input_shapes=args.input_shape)
    if loaded.kind == "onnx":
        return _compile_onnx(loaded.path, out, config, args)  # type: ignore[arg-type]
    assert loaded.model is not None and loaded.example_inputs is not None
    print(f"graphprune: compiling ({loaded.kind}) with pattern {', '.join(map(str, config.pattern))}", file=sys.stderr)
    try:
        result = gp_compile(
            loaded.model,
            loaded.example_inputs,
            config,
            output_dir=out,
            progress=True,
            dump_dir=args.dump_dir,
            model_name=args.model,
        )
    except GraphPruneError as e:
        rep = getattr(e, "report", None)
        if rep is not None:
            print(rep.table(args.max_rows))
            rep.to_json(out / "report.json")
            print(f"report: {out / 'report.json'}")
        raise
    rep = result.report
    if rep.structured:
        from graphprune.report import structured_table

        print(structured_table(rep.structured, args.max_rows))
        print()
    if config.element_pattern is not None or not rep.structured:
        print(rep.table(args.max_rows))
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
    mvf = result.validation.get("masked_vs_folded")
    if mvf:
        print(f"forms:   masked == folded: {'OK' if mvf['ok'] else 'FAILED'} (max |diff| {mvf['max_abs']:.3g})")
    print("time:    " + ", ".join(f"{k} {v:.2f}s" for k, v in rep.timings.items()))
    for v in rep.outputs.values():
        print(f"wrote:   {v}")
    return 0


def _compile_onnx(path: Path, out: Path, config: Any, args: argparse.Namespace) -> int:
    from graphprune.passes.onnx.prune_initializers import prune_onnx
    from graphprune.report import CompileReport

    pattern = config.element_pattern
    if pattern is None:
        raise ConfigError("an ONNX input can only be pruned element-wise (N:M or unstructured); structured patterns need a PyTorch model")
    res = prune_onnx(path, out / "model.onnx", pattern, include=config.include, exclude=config.exclude)
    rep = CompileReport(model=str(path), config=config.to_dict(), decisions=list(res.decisions))
    rep.capture = {"method": "onnx", "tried": []}
    rep.audit = res.audit.to_dict()
    rep.parity = res.parity.to_dict() if res.parity is not None else None
    rep.outputs = {"onnx": str(out / "model.onnx"), "report": str(out / "report.json")}
    rep.to_json(out / "report.json")
    print(rep.table(args.max_rows))
    print(f"audit:   {'OK' if rep.audit and rep.audit.get('ok') else 'FAILED'}")
    if rep.parity:
        print(f"parity:  {'OK' if rep.parity['ok'] else 'FAILED'} - pruned ONNX vs original ONNX with the same masks, "
              f"max |diff| {rep.parity['max_abs']:.3g}")
    for v in rep.outputs.values():
        print(f"wrote:   {v}")
    ok = bool(rep.audit and rep.audit.get("ok")) and bool(not rep.parity or rep.parity["ok"])
    return 0 if ok else 6


def _cmd_inspect(args: argparse.Namespace) -> int:
    from graphprune.api import copy_model, inspect_model
    from graphprune.inputs import load_model

    config = _config(args)
    loaded = load_model(args.model, trust_pickle=args.trust_pickle, input_shapes=args.input_shape)
    if loaded.kind == "onnx":
        from graphprune.runtime.audit import audit_onnx

        print(audit_onnx(loaded.path).summary())  # type: ignore[arg-type]
        return 0
    assert loaded.model is not None and loaded.example_inputs is not None
    rep = inspect_model(copy_model(loaded.model), loaded.example_inputs, config)
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


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    # stage progress ("capture ...", "export ...") goes to stderr; -v adds the details
    logging.getLogger("graphprune").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from graphprune.bench import run_bench

    handlers = {"compile": _cmd_compile, "inspect": _cmd_inspect, "audit": _cmd_audit, "bench": run_bench}
    try:
        return handlers[args.command](args)
    except GraphPruneError as e:
        print(f"graphprune {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
