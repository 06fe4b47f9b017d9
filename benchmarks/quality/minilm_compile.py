"""Quality of what ``graphprune compile`` ships: the real MiniLM (all-MiniLM-L6-v2) at 2:4, calibrated.

The pipeline is compile's own stage list on ``models.zoo:minilm`` — calibration-data, copy, capture
(torch.export), find, decide (all 37 Linear layers, pooler included, 2:4 along K), the masks stage
(``compute-masks`` for magnitude, else ``calibrate`` with ``--calib models.zoo:minilm_calib``: 640 real
sentences of the calib split, batched by token count), apply-masks + fold-masks, fidelity: the folded
module is what compile exports (export, audit and ONNX parity are separate, unchanged checks). No
permutation unless a variant asks for compile's own (folded, exact) one. Evaluation: 200 sentences of
the eval split (``models.zoo:minilm_eval``), disjoint from every calibration sentence:

- ``emb cos``: cosine of the mean-pooled sentence embeddings to the dense model's (the sentence-
  transformers metric; the issue's target);
- ``fidelity``: :func:`graphprune.runtime.fidelity.measure_fidelity` on the same batches — mean / min
  cosine per token of ``last_hidden_state`` (the worst output), what ``report.json`` will carry.

    python benchmarks/quality/minilm_compile.py --variants '{"method": "magnitude"}' '{"refit": false}' '{}'
    python benchmarks/quality/minilm_compile.py --variants '{}' --budgets 0.01 0.02 0.05 --ranking error single
    python benchmarks/quality/minilm_compile.py --compiled OUT   # what `graphprune compile ... -o OUT` wrote

Each variant is a JSON object of :class:`~graphprune.passes.calibrate.CalibrateOptions` fields, plus
``"permute": SECONDS`` to run compile's permute-channels pass first (what ``--permute`` ships: the
permutation folded into the producers, exact; searched on |W|) with that search budget per group, or
``"permute_scores": SECONDS`` for the same permutation searched on the method's scores |W|·||x||.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for models/

import graphprune.passes.all  # noqa: F401  (registers every pass)
from graphprune._module_tensors import get_tensor
from graphprune.config import CompileConfig, SemiStructured
from graphprune.passes.base import PassContext, run_stages, stage
from graphprune.passes.calibrate import CalibrateOptions, data_stage, fidelity_stage, mask_stage, targets_of
from graphprune.passes.calibrate.budget import BudgetSearch
from graphprune.passes.permute_channels import PermuteChannelsConfig
from graphprune.sparsity.metrics import check_nm
from models import zoo

CONFIG = CompileConfig(pattern=(SemiStructured(),))


def stages(model: torch.nn.Module, inputs: tuple[Any, ...]) -> PassContext:
    """compile's copy / capture / find / decide stages, on a context of their own."""
    ctx = PassContext(inputs, config=CONFIG)
    run_stages([stage("copy"), stage("capture"), stage("find"), stage("decide")], model, ctx)
    return ctx


def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1e-9)


@torch.no_grad()
def embeddings(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([mean_pool(model(ids, mask).last_hidden_state, mask) for ids, mask in batches])


def run_variant(
    dense: torch.nn.Module, inputs: tuple[Any, ...], calib: list, evalb: list, spec: dict[str, Any]
) -> dict[str, Any]:
    """compile's stage list for one variant, up to fidelity (export, audit and parity do not change the numbers)."""
    spec = dict(spec)
    permute = spec.pop("permute", False)  # compile's permute-channels stage first (|W| scores)
    permute_scores = spec.pop("permute_scores", False)  # the same permutation, searched on the method's scores
    opts = CalibrateOptions(**spec)
    method = opts.method
    ctx = PassContext(inputs, config=CONFIG)
    plan = [data_stage(calib if method != "magnitude" else None, evalb, method=method)]
    plan += [stage("copy"), stage("capture"), stage("find"), stage("decide")]
    if permute:
        plan.append(stage("permute-channels", PermuteChannelsConfig(time_budget_s=float(permute)), label="permute"))
    pc = PermuteChannelsConfig(time_budget_s=float(permute_scores)) if permute_scores else None
    plan.append(mask_stage(method, has_calibration=method != "magnitude", options=opts, permute=pc))
    plan += [stage("apply-masks", label="rewrite"), stage("fold-masks", label="rewrite"), fidelity_stage()]
    t0 = time.perf_counter()
    work = run_stages(plan, dense, ctx)
    seconds = ctx.report.timings.get("masks", 0.0) + ctx.report.timings.get("permute", 0.0)
    exact = all(check_nm(get_tensor(work, n).detach(), 2, 4, axis=ctx.sites[n].k_axis).ok for n in ctx.patterns)
    fid = ctx.artifacts["fidelity"]
    cos = F.cosine_similarity(embeddings(work, evalb), embeddings(dense, evalb), dim=-1)
    errs = [e.output_error for e in fid.layers]
    return {
        "variant": spec | ({"permute": permute} if permute else {}) | ({"permute_scores": permute_scores} if permute_scores else {}),
        "pruned_layers": len(ctx.patterns),
        "exact_2_4": exact,
        "emb_mean_cos": float(cos.mean()),
        "emb_min_cos": float(cos.min()),
        "fidelity": fid.summary(),
        "token_mean_cos": fid.mean_cosine,
        "token_min_cos": fid.min_cosine,
        "mean_layer_error": sum(errs) / len(errs) if errs else None,
        "seconds": round(seconds, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }


def evaluate_compiled(folder: Path, n_eval: int) -> dict[str, Any]:
    """Embedding cosine of what ``graphprune compile -o FOLDER`` wrote: the weights of FOLDER/pruned.pt2
    (read without unpickling) put into a fresh MiniLM, run on the held-out sentences at their own lengths
    (the pt2's sequence axis is fixed at the example's 32 tokens)."""
    from graphprune.io.pt2 import read_pt2

    dense, _ = zoo.build("minilm")
    pruned, _ = zoo.build("minilm")
    program = read_pt2(folder / "pruned.pt2", sample_inputs=False).program
    state = {**dict(program.named_parameters()), **dict(program.named_buffers())}
    missing = [k for k in pruned.state_dict() if k not in state]
    pruned.load_state_dict({k: v for k, v in state.items() if k in pruned.state_dict()}, strict=False)
    evalb = zoo.minilm_eval(n_eval)
    a, b = embeddings(dense.eval(), evalb), embeddings(pruned.eval(), evalb)
    cos = F.cosine_similarity(a, b, dim=-1)
    report = json.loads((folder / "report.json").read_text())
    zeros = {k: float((v == 0).float().mean()) for k, v in state.items() if k.endswith(".weight") and v.dim() == 2}
    return {
        "folder": str(folder),
        "emb_mean_cos": float(cos.mean()),
        "emb_min_cos": float(cos.min()),
        "report_fidelity": report.get("fidelity"),
        "timings": report.get("timings"),
        "not_in_pt2": missing,
        "layers_at_50pct_zeros": sum(abs(z - 0.5) < 1e-6 for z in zeros.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", default=['{"method": "magnitude"}', '{"refit": false}', "{}"])
    ap.add_argument("--calib", type=int, default=640, help="calibration sentences")
    ap.add_argument("--eval", type=int, default=200, help="evaluation sentences")
    ap.add_argument("--budgets", nargs="*", type=float, default=[], help="max_drift values to fit (1 - mean token cosine)")
    ap.add_argument("--ranking", nargs="*", default=["error"], choices=["error", "single"])
    ap.add_argument("--budget-variant", default="{}", help="CalibrateOptions for the budget runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--compiled", type=Path, default=None,
                    help="evaluate what `graphprune compile models.zoo:minilm ... -o DIR` wrote, and stop")
    args = ap.parse_args()
    if args.compiled is not None:
        res = evaluate_compiled(args.compiled, args.eval)
        print(f"{args.compiled}: emb cos {res['emb_mean_cos']:.4f} (min {res['emb_min_cos']:.3f}); "
              f"{res['layers_at_50pct_zeros']} layers at 50% zeros; masks {res['timings'].get('masks', 0):.0f} s")
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2, default=str))
        return
    torch.set_num_threads(args.threads)
    dense, inputs = zoo.build("minilm")
    calib, evalb = zoo.minilm_calib(args.calib), zoo.minilm_eval(args.eval)
    out: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads",
        "load_before": os.getloadavg(),
        "calib_sentences": args.calib,
        "calib_batches": len(calib),
        "eval_sentences": args.eval,
        "rows": [],
        "budgets": [],
    }
    print(f"MiniLM: {args.calib} calibration sentences in {len(calib)} batches, {args.eval} eval sentences", flush=True)
    for text in args.variants:
        row = run_variant(dense, inputs, calib, evalb, json.loads(text))
        out["rows"].append(row)
        print(
            f"  {text:<48} emb cos {row['emb_mean_cos']:.4f} (min {row['emb_min_cos']:.3f})  token cos {row['token_mean_cos']:.4f}"
            f"  {row['seconds']:.0f}s  load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    if args.budgets:
        ctx = stages(dense, inputs)
        opts = CalibrateOptions(**json.loads(args.budget_variant))
        total = sum(get_tensor(dense, n).numel() for n in ctx.patterns)
        for ranking in args.ranking:
            t0 = time.perf_counter()
            search = BudgetSearch(dense, targets_of(ctx), calib, evalb, options=opts, ranking=ranking)  # type: ignore[arg-type]
            print(f"  ranking {ranking}: {time.perf_counter() - t0:.0f}s", flush=True)
            for b in sorted(args.budgets):
                t0 = time.perf_counter()
                try:
                    res = search.fit(b)
                except Exception as e:  # an unreachable budget is a result too
                    out["budgets"].append({"max_drift": b, "ranking": ranking, "error": str(e)})
                    print(f"  budget {b}: {e}", flush=True)
                    continue
                row = {
                    "max_drift": b,
                    "ranking": res.ranking_kind,
                    "dense_layers": res.dense,
                    "sparsity": res.sparsity,
                    "flops_on_zeros": res.flops_on_zeros,
                    "drift": res.fidelity.drift,
                    "token_mean_cos": res.fidelity.mean_cosine,
                    "trials": res.trials,
                    "seconds": round(time.perf_counter() - t0, 1),
                    "prunable_params": total,
                }
                out["budgets"].append(row)
                print(
                    f"  budget {b} ({res.ranking_kind}): {len(res.dense)} dense, sparsity {res.sparsity:.3f}, "
                    f"FLOPs on zeros {res.flops_on_zeros:.3f}, drift {res.fidelity.drift:.4f}, {len(res.trials)} trials, "
                    f"{row['seconds']:.0f}s",
                    flush=True,
                )
    out["load_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
