"""`make demo`'s closing lines: what calibration bought, read from the two runs' report.json files.

    python -m models.demo out/demo-magnitude out/demo

Prints, for each run, the fidelity to the dense model (report.json's ``"fidelity"``: pruned vs dense on
held-out sentences, not ONNX parity), the sparsity and the masks stage's time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _row(folder: Path) -> str:
    rep = json.loads((folder / "report.json").read_text())
    fid = rep["fidelity"]
    worst = min(fid["outputs"], key=lambda o: o["mean_cosine"])
    method = next((p["details"].get("method") for p in rep["passes"] if p["name"] == "calibration-data"), None) or "magnitude"
    masks_s = rep["timings"].get("masks", 0.0)
    return (
        f"  {method:<10} mean cosine {worst['mean_cosine']:.3f} (worst token {worst['min_cosine']:.2f}) over "
        f"{fid['samples']} held-out {fid['source']} sentences; {rep['counts'].get('pruned', 0)} layers pruned; "
        f"masks {masks_s:.0f} s  [{folder}/report.json]"
    )


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    print("\nfidelity to the dense model (token embeddings of last_hidden_state, pruned vs dense MiniLM):")
    for arg in argv:
        print(_row(Path(arg)))
    print("  (1.000 = unchanged. 640 calibration sentences instead of the demo's 64 give 0.937: benchmarks/RESULTS.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
