"""Sparse kernels vs dense, per layer and end to end (BENCHMARKING.md rules: alternating blocks,
untimed warm-up, min / median, ratio of medians = dense / sparse, > 1 means sparse is faster).

CPU (CSR, PyTorch, ``torch.set_num_threads(--threads)``, 2 by default)::

    python benchmarks/sparse_kernels.py cpu [--sparsity 0.9,0.95] [--batches 1,8] [--tokens 128]

  Linear layers at BERT-base shapes (768->3072, 3072->768, 768->768) with unstructured magnitude
  sparsity, input [batch, tokens, in]; dense ``F.linear`` against the three CSR call forms
  (``F.linear(x, W_csr)``, ``torch.sparse.mm(W_csr, x.T).T``, ``torch.sparse.addmm``).

    python benchmarks/sparse_kernels.py cpu-e2e [--sparsity 0.9] [--batch 1]

  BERT-base-sized encoder (random weights, seq 128), every encoder Linear pruned to the given
  sparsity, converted by ``apply_sparse_forms`` (CSR only where the pre-flight measures a win),
  timed dense vs converted.

CUDA (2:4 semi-structured, fp16, CUDA-synchronized timers)::

    python benchmarks/sparse_kernels.py cuda [--tokens 1024,4096]

  Per layer: 4096x4096, 8192x8192, BERT-large FFN (1024->4096, 4096->1024), Llama-7B FFN
  (4096->11008, 11008->4096); dense ``F.linear`` vs ``to_sparse_semi_structured`` weights. End to
  end: a BERT-large-sized encoder (24 layers, hidden 1024, batch 8, seq 128) pruned 2:4, dense vs
  semi-structured Linear layers. Without a CUDA GPU it prints why and exits with status 2.

``--json FILE`` writes every figure with the machine, date and versions.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphprune.bench import machine_info
from graphprune.passes.convert_sparse_forms import CSR_FORMS, CSRLinear, SparseFormsConfig, apply_sparse_forms
from graphprune.runtime.microbench import speedup, time_alternating
from graphprune.sparsity import nm_mask, unstructured_mask

CPU_SHAPES = {"ffn_in 768->3072": (768, 3072), "ffn_out 3072->768": (3072, 768), "attn 768->768": (768, 768)}
CUDA_SHAPES = {
    "square 4096": (4096, 4096),
    "square 8192": (8192, 8192),
    "bert-large ffn_in 1024->4096": (1024, 4096),
    "bert-large ffn_out 4096->1024": (4096, 1024),
    "llama-7b ffn_up 4096->11008": (4096, 11008),
    "llama-7b ffn_down 11008->4096": (11008, 4096),
}


def _row(name: str, timings: dict[str, Any], baseline: str = "dense") -> dict[str, Any]:
    out: dict[str, Any] = {"layer": name}
    for k, t in timings.items():
        out[k] = {"min_ms": t.min_ms, "median_ms": t.median_ms}
        if k != baseline:
            out[k]["ratio"] = speedup(timings[baseline], t)
    return out


def _print_rows(rows: list[dict[str, Any]], forms: list[str]) -> None:
    head = f"{'layer':<34} {'input':<16} {'sparsity':>8} " + " ".join(f"{f:>24}" for f in forms)
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = []
        for f in forms:
            c = r[f]
            ratio = f" ({c['ratio']:.2f}x)" if "ratio" in c else ""
            cells.append(f"{c['median_ms']:>10.3f}/{c['min_ms']:.3f}{ratio}".rjust(24))
        print(f"{r['layer']:<34} {r['input']:<16} {r['sparsity']:>8.0%} " + " ".join(cells))
    print("cells: median/min ms (dense median / form median)")


def run_cpu(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for sparsity in [float(s) for s in args.sparsity.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            for name, (fin, fout) in CPU_SHAPES.items():
                lin = nn.Linear(fin, fout)
                with torch.no_grad():
                    lin.weight.mul_(unstructured_mask(lin.weight, sparsity))
                x = torch.randn(batch, args.tokens, fin, generator=gen)
                fns = {"dense": lambda lin=lin, x=x: F.linear(x, lin.weight, lin.bias)}
                for form in CSR_FORMS:
                    mod = CSRLinear(lin.weight, lin.bias, form)
                    fns[f"csr:{form}"] = lambda mod=mod, x=x: mod(x)
                t = time_alternating(fns, warmup=3, blocks=args.blocks, min_block_s=args.min_block_s)
                row = _row(name, t)
                row.update({"input": "x".join(map(str, x.shape)), "sparsity": sparsity})
                rows.append(row)
                print(f"  {name} batch {batch} sparsity {sparsity:.0%}: dense {t['dense'].median_ms:.2f} ms, "
                      + ", ".join(f"{f} {speedup(t['dense'], t[f]):.2f}x" for f in fns if f != "dense"), file=sys.stderr)
    _print_rows(rows, ["dense", *[f"csr:{f}" for f in CSR_FORMS]])
    return {"cpu_layers": rows}


def _prune_linears(model: nn.Module, fn: Any) -> int:
    count = 0
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name.startswith("encoder."):
                mod.weight.mul_(fn(mod.weight))
                count += 1
    return count


def run_cpu_e2e(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import BertConfig, BertModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = BertModel(BertConfig(attn_implementation="eager")).eval()
    ids = torch.randint(0, 30522, (args.batch, 128))
    inputs = (ids, torch.ones_like(ids))
    out: dict[str, Any] = {}
    for sparsity in [float(s) for s in args.sparsity.split(",")]:
        dense = copy.deepcopy(model)
        n = _prune_linears(dense, lambda w, s=sparsity: unstructured_mask(w, s))
        sparse = copy.deepcopy(dense)
        t0 = time.perf_counter()
        rep = apply_sparse_forms(sparse, inputs, SparseFormsConfig(blocks=5))
        preflight = time.perf_counter() - t0
        with torch.no_grad():
            t = time_alternating({"dense": lambda d=dense: d(*inputs), "converted": lambda s=sparse: s(*inputs)},
                                 warmup=2, blocks=args.blocks, min_block_s=max(args.min_block_s, 0.5))
        chosen: dict[str, int] = {}
        for lf in rep.layers:
            chosen[lf.chosen] = chosen.get(lf.chosen, 0) + 1
        key = f"bert-base batch {args.batch} seq 128, {sparsity:.0%} unstructured ({n} Linear)"
        out[key] = {
            "dense": {"min_ms": t["dense"].min_ms, "median_ms": t["dense"].median_ms},
            "converted": {"min_ms": t["converted"].min_ms, "median_ms": t["converted"].median_ms},
            "ratio": speedup(t["dense"], t["converted"]),
            "forms": chosen,
            "preflight_s": preflight,
        }
        print(f"{key}: dense {t['dense'].median_ms:.1f} ms (min {t['dense'].min_ms:.1f}), converted "
              f"{t['converted'].median_ms:.1f} ms (min {t['converted'].min_ms:.1f}) -> {out[key]['ratio']:.2f}x; "
              f"forms {chosen}; pre-flight {preflight:.1f}s")
    return {"cpu_e2e": out}


def _no_cuda() -> None:
    print(
        "no CUDA GPU: the CUDA part of this benchmark (2:4 semi-structured kernels, cuSPARSELt/CUTLASS) needs an "
        f"NVIDIA GPU of compute capability 8.0+ and a CUDA build of torch (this is torch {torch.__version__}, "
        f"torch.cuda.is_available() = {torch.cuda.is_available()})",
        file=sys.stderr,
    )


def run_cuda(args: argparse.Namespace) -> dict[str, Any]:
    if not torch.cuda.is_available():
        _no_cuda()
        raise SystemExit(2)
    from torch.sparse import to_sparse_semi_structured

    cap = torch.cuda.get_device_capability()
    if cap < (8, 0):
        print(f"{torch.cuda.get_device_name()} is sm{cap[0]}{cap[1]}: 2:4 kernels need sm80+", file=sys.stderr)
        raise SystemExit(2)
    dtype = torch.float16
    rows = []
    for tokens in [int(t) for t in args.tokens.split(",")]:
        for name, (fin, fout) in CUDA_SHAPES.items():
            w = torch.randn(fout, fin, device="cuda", dtype=dtype)
            w = w * nm_mask(w, 2, 4, axis=1)
            ws = to_sparse_semi_structured(w)
            x = torch.randn(tokens, fin, device="cuda", dtype=dtype)
            t = time_alternating({"dense": lambda w=w, x=x: F.linear(x, w), "semi_structured": lambda ws=ws, x=x: F.linear(x, ws)},
                                 warmup=10, blocks=args.blocks, min_block_s=args.min_block_s, sync=True)
            row = _row(name, t)
            row.update({"input": f"{tokens}x{fin}", "sparsity": 0.5})
            rows.append(row)
    _print_rows(rows, ["dense", "semi_structured"])
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, attn_implementation="eager")
    dense = BertModel(cfg).eval().cuda().half()
    _prune_linears(dense, lambda w: nm_mask(w, 2, 4, axis=1))
    ids = torch.randint(0, 30522, (8, 128), device="cuda")
    inputs = (ids, torch.ones_like(ids))
    sparse = copy.deepcopy(dense)
    rep = apply_sparse_forms(sparse, inputs, SparseFormsConfig(measure=False))
    measured = copy.deepcopy(dense)
    rep_m = apply_sparse_forms(measured, inputs, SparseFormsConfig())
    with torch.no_grad():
        t = time_alternating({"dense": lambda: dense(*inputs), "all_semi_structured": lambda: sparse(*inputs), "measured": lambda: measured(*inputs)},
                             warmup=5, blocks=args.blocks, min_block_s=0.2, sync=True)
    e2e = _row("bert-large encoder fp16 8x128", t)
    e2e["converted_all"] = len(rep.converted)
    e2e["converted_measured"] = len(rep_m.converted)
    print(f"end to end {e2e['layer']}: dense {t['dense'].median_ms:.2f} ms, all semi-structured "
          f"{e2e['all_semi_structured']['ratio']:.2f}x ({len(rep.converted)} layers), measured choice "
          f"{e2e['measured']['ratio']:.2f}x ({len(rep_m.converted)} layers)")
    return {"cuda_layers": rows, "cuda_e2e": e2e, "gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["cpu", "cpu-e2e", "cuda", "all"])
    ap.add_argument("--sparsity", default=None, help="comma-separated sparsities (cpu: 0.9,0.95; cpu-e2e: 0.9)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", default=None, help="cpu: tokens per sequence (128); cuda: rows of x (1024,4096)")
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (BENCHMARKING.md: 2; 1 when other jobs oversubscribe the cores)")
    ap.add_argument("--min-block-s", type=float, default=0.3, help="each timed block repeats a call for at least this long")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result: dict[str, Any] = {"machine": machine_info(args.threads), "command": " ".join(sys.argv)}
    if args.what in ("cpu", "all"):
        a = argparse.Namespace(**{**vars(args), "sparsity": args.sparsity or "0.9,0.95", "tokens": int(args.tokens or 128)})
        result.update(run_cpu(a))
    if args.what in ("cpu-e2e", "all"):
        result.update(run_cpu_e2e(argparse.Namespace(**{**vars(args), "sparsity": args.sparsity or "0.9"})))
    if args.what in ("cuda", "all"):
        if args.what == "all" and not torch.cuda.is_available():
            _no_cuda()
        else:
            result.update(run_cuda(argparse.Namespace(**{**vars(args), "tokens": args.tokens or "1024,4096"})))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
