"""Time ``graphprune.compile`` per stage (capture, masks, rewrite, export, audit, parity).

Models: the real pretrained MiniLM (batch 2, seq 128) and a ResNet-50-sized CNN (transformers'
default ResNetConfig, random weights, 1x3x224x224), both at 2:4. Each model is compiled ``--repeat``
times in one process; the table shows the median seconds of each stage.

    python benchmarks/compile_speed.py [--repeat 2] [--models minilm,resnet50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphprune
from graphprune import CompileConfig, SemiStructured
from graphprune.bench import cpu_model
from models import zoo

STAGES = ("copy", "capture", "find_sites", "masks", "rewrite", "export", "audit", "parity", "save")


def _build(name: str):
    if name == "minilm":
        return zoo.minilm(seq_len=128)
    return zoo.build(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--models", default="minilm,resnet50")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = {}
    for name in args.models.split(","):
        model, inputs = _build(name)
        runs = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                res = graphprune.compile(model, inputs, CompileConfig(pattern=(SemiStructured(),)), output_dir=d)
                total = time.perf_counter() - t0
            assert res.validation["onnx_parity"]["ok"] and res.report.audit["ok"]
            runs.append({**res.report.timings, "total": total})
        med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in (*STAGES, "total")}
        t = res.report.totals()
        results[name] = {"median_seconds": med, "runs": len(runs), "pruned_sites": t["pruned_sites"], "sites": t["sites"],
                         "params": t["params"], "capture": res.report.capture["method"]}
    env = {
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    print(f"machine: {env}")
    head = f"{'model':<10} " + " ".join(f"{s:>9}" for s in (*STAGES, "total"))
    print(head)
    for name, r in results.items():
        print(f"{name:<10} " + " ".join(f"{r['median_seconds'][s]:>9.2f}" for s in (*STAGES, "total")))
    if args.json:
        args.json.write_text(json.dumps({"env": env, "results": results}, indent=2))


if __name__ == "__main__":
    main()
