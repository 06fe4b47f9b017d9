"""Channel permutation efficacy and search time on the real MiniLM (and other zoo models).

For each model and time budget: the permutation pass runs on a fresh copy; the table gives, per N:M
layer, the magnitude the N:M mask keeps without and with the permutation, the group search time,
and overall (weighted by each layer's sum |W|). The permuted dense model is checked against the
unpermuted one (``permuted == dense``) on the example inputs.

    python benchmarks/permutation.py [--models minilm] [--budgets 0.5,2,5] [--pattern 2:4] [--json out.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphprune.bench import machine_info
from graphprune.passes.permute_channels import PermuteChannelsConfig, permute_model_channels
from graphprune.runtime.compare import compare_outputs
from models import zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm")
    ap.add_argument("--budgets", default="0.5,2,5", help="search seconds per channel group")
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--layers", action="store_true", help="print the per-layer table for the largest budget")
    args = ap.parse_args()
    torch.set_num_threads(2)
    n, m = (int(v) for v in args.pattern.split(":"))
    result: dict[str, Any] = {"machine": machine_info(2), "command": " ".join(sys.argv), "pattern": args.pattern, "runs": []}
    budgets = [float(b) for b in args.budgets.split(",")]
    for name in args.models.split(","):
        model, inputs = zoo.build(name)
        with torch.no_grad():
            ref = model(*inputs)
        for budget in budgets:
            work = copy.deepcopy(model)
            t0 = time.perf_counter()
            rep = permute_model_channels(work, inputs, PermuteChannelsConfig(n=n, m=m, time_budget_s=budget, progress=False))
            total = time.perf_counter() - t0
            with torch.no_grad():
                parity = compare_outputs(ref, work(*inputs), name="permuted vs dense")
            before, after = rep.overall()
            pb, pa = rep.overall(permuted_only=True)
            run = {
                "model": name,
                "budget_s": budget,
                "kept_before": before,
                "kept_after": after,
                "permuted_layers_kept_before": pb,
                "permuted_layers_kept_after": pa,
                "groups_permuted": len(rep.permuted_groups),
                "groups": len(rep.groups),
                "layers": len(rep.layers),
                "search_s": rep.search_seconds,
                "total_s": total,
                "parity_ok": parity.ok,
                "parity_max_abs": parity.max_abs,
                "per_group": [
                    {"group": g.name, "consumers": g.consumers, "kept_before": g.kept_before, "kept_after": g.kept_after,
                     "seconds": g.seconds, "iterations": g.iterations, "permuted": g.permuted, "reason": g.reason}
                    for g in rep.groups
                ],
                "per_layer": [lay.to_dict() for lay in rep.layers],
            }
            result["runs"].append(run)
            print(
                f"{name} {args.pattern} budget {budget:g}s/group: kept {before:.4f} -> {after:.4f} ({after - before:+.4f}) over "
                f"{len(rep.layers)} N:M layers; permuted layers {pb:.4f} -> {pa:.4f} ({pa - pb:+.4f}); "
                f"{len(rep.permuted_groups)}/{len(rep.groups)} groups; search {rep.search_seconds:.1f}s, total {total:.1f}s; "
                f"permuted == dense: {parity.ok} (max |diff| {parity.max_abs:.2g})"
            )
            if args.layers and budget == budgets[-1]:
                print(rep.table())
                for g in rep.permuted_groups:
                    print(f"  group {g.name}: {g.kept_before:.4f} -> {g.kept_after:.4f} in {g.seconds:.2f}s ({g.iterations} rounds)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
