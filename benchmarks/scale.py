"""Compile Llama-shaped models of ~300M and ~1.1B parameters at 2:4: wall time per stage and peak RSS.

Each model is built (random weights, seeded) and compiled in a FRESH subprocess, so one model's
memory never shows in the other's figures. The worker samples its own resident set size
(``/proc/self/status`` VmRSS, every 20 ms) and attributes each sample to the pipeline stage that is
running (stages announce themselves on the ``graphprune`` logger as ``"<stage> ..."``); the peak of
the whole process is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``. Memory is reported in GB
(1e9 bytes) and as a multiple of the model's weight bytes (parameters + buffers, in the model's dtype).

Models (transformers ``LlamaForCausalLM``, untied LM head, eager attention, ``use_cache`` left at its
default True: graphprune turns it off on its own copy):

- ``1b``:   hidden 2048, 22 layers, 32 heads / 4 KV heads, FFN 5632, vocabulary 32000 (TinyLlama-1.1B's
  shape): 1.100B parameters, 4.40 GB in float32.
- ``300m``: hidden 1024, 22 layers, 16 heads / 4 KV heads, FFN 2816, vocabulary 32000: 0.313B
  parameters, 1.25 GB in float32.
- ``tiny``: hidden 64, 2 layers (a smoke test of this script).

Example inputs: ``input_ids`` and ``attention_mask`` of batch 1 x 16 tokens.

    python benchmarks/scale.py --models 300m,1b --json out/scale.json

The worker hands the model to ``graphprune.compile(..., copy=False)`` (the caller gives up its
model, as the CLI does with a model it loaded); ``--copy`` keeps compile's defensive deep copy and
measures what that costs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CONFIGS: dict[str, dict[str, int]] = {
    "tiny": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 128, "vocab": 1000},
    "300m": {"hidden": 1024, "layers": 22, "heads": 16, "kv_heads": 4, "ffn": 2816, "vocab": 32000},
    "1b": {"hidden": 2048, "layers": 22, "heads": 32, "kv_heads": 4, "ffn": 5632, "vocab": 32000},
}
_STAGE_RE = re.compile(r"^([a-z_-]+) \.\.\.$")


def _rss_bytes() -> tuple[int, int, int]:
    """(VmRSS, RssAnon, RssFile) in bytes: file-backed pages are the ONNX data onnxruntime maps from disk."""
    out = {"VmRSS:": 0, "RssAnon:": 0, "RssFile:": 0}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(maxsplit=1)[0] if line.strip() else ""
            if key in out:
                out[key] = int(line.split()[1]) * 1024
    return out["VmRSS:"], out["RssAnon:"], out["RssFile:"]


class StageMemory(logging.Handler):
    """Peak RSS per pipeline stage, from a sampling thread and the stage announcements."""

    def __init__(self, interval_s: float = 0.02) -> None:
        super().__init__(level=logging.INFO)
        self.stage = "build"
        self.peaks: dict[str, int] = {}
        self.anon: dict[str, int] = {}
        self.file: dict[str, int] = {}
        self.order: list[str] = []
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def set_stage(self, name: str) -> None:
        self._sample()
        self.stage = name
        if name not in self.order:
            self.order.append(name)
        self._sample()

    def emit(self, record: logging.LogRecord) -> None:
        m = _STAGE_RE.match(record.getMessage())
        if m and record.name == "graphprune.passes.base":
            self.set_stage(m.group(1))

    def _sample(self) -> None:
        rss, anon, file = _rss_bytes()
        if rss > self.peaks.get(self.stage, 0):
            self.peaks[self.stage] = rss
            self.anon[self.stage] = anon
            self.file[self.stage] = file

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> StageMemory:
        self.order.append(self.stage)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def build(name: str, dtype: str = "float32") -> tuple[Any, tuple[Any, ...]]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    c = CONFIGS[name]
    config = LlamaConfig(
        vocab_size=c["vocab"],
        hidden_size=c["hidden"],
        intermediate_size=c["ffn"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        num_key_value_heads=c["kv_heads"],
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        model = model.to_empty(device="cpu").to(getattr(torch, dtype))
        with torch.no_grad():  # random weights without transformers' slow per-module init
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02)
        model.model.rotary_emb.__init__(config)  # non-persistent inv_freq, lost by to_empty
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, c["vocab"], (1, 16), generator=gen)
    return model.eval(), (ids, torch.ones_like(ids))


def worker(name: str, out_json: Path, *, copy: bool, dtype: str) -> None:
    import torch

    torch.set_num_threads(2)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("graphprune").setLevel(logging.INFO)
    import graphprune
    from graphprune import CompileConfig, SemiStructured

    mem = StageMemory()
    logging.getLogger("graphprune").addHandler(mem)
    t_start = time.perf_counter()
    with mem:
        model, inputs = build(name, dtype)
        t_built = time.perf_counter()
        weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        params = sum(p.numel() for p in model.parameters())
        with tempfile.TemporaryDirectory(prefix=f"scale-{name}-") as tmp:
            kwargs: dict[str, Any] = {} if copy else {"copy": False}
            res = graphprune.compile(
                model, inputs, CompileConfig(pattern=(SemiStructured(),)), output_dir=tmp, progress=True, **kwargs
            )
            files = {p.name: p.stat().st_size for p in Path(tmp).iterdir()}
        t_end = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rep = res.report
    out = {
        "model": name,
        "config": CONFIGS[name],
        "dtype": dtype,
        "params": params,
        "weight_bytes": weight_bytes,
        "copy": copy,
        "build_seconds": t_built - t_start,
        "compile_seconds": t_end - t_built,
        "stage_seconds": dict(rep.timings),
        "stage_peak_rss_gb": {k: mem.peaks.get(k, 0) / 1e9 for k in mem.order},
        "stage_peak_rss_x_weights": {k: mem.peaks.get(k, 0) / weight_bytes for k in mem.order},
        "stage_peak_anon_file_gb": {k: [mem.anon.get(k, 0) / 1e9, mem.file.get(k, 0) / 1e9] for k in mem.order},
        "peak_rss_gb": peak / 1e9,
        "peak_rss_x_weights": peak / weight_bytes,
        "audit_ok": rep.audit.get("ok"),
        "audit_summary": rep.audit.get("summary"),
        "parity": {k: rep.parity.get(k) for k in ("ok", "max_abs", "max_rel", "cosine_min", "how", "batch_sizes", "tolerance")},
        "pruned_sites": rep.totals()["pruned_sites"],
        "sites": rep.totals()["sites"],
        "notes": list(rep.notes),
        "exporter": rep.capture.get("onnx_exporter"),
        "files": files,
    }
    out_json.write_text(json.dumps(out, indent=2))


def _machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_total = int(line.split()[1]) * 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_total_gb": mem_total / 1e9,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "date": datetime.date.today().isoformat(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="300m,1b", help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--copy", action="store_true", help="keep compile's deep copy of the caller's model")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.worker_out, copy=args.copy, dtype=args.dtype)
        return
    results: dict[str, Any] = {"machine": _machine(), "load_before": os.getloadavg(), "runs": {}}
    for name in args.models.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(CONFIGS)}")
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            tmp = Path(f.name)
        cmd = [sys.executable, __file__, "--worker", name, "--worker-out", str(tmp), "--dtype", args.dtype]
        if args.copy:
            cmd.append("--copy")
        load = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            results["runs"][name] = {"failed": proc.returncode, "wall_seconds": wall, "load_before": load}
            print(f"{name}: worker failed with exit code {proc.returncode}", file=sys.stderr)
            continue
        run = json.loads(tmp.read_text())
        tmp.unlink()
        run.update(wall_seconds=wall, load_before=load, load_after=os.getloadavg())
        results["runs"][name] = run
        print(
            f"{name}: {run['params'] / 1e9:.3f}B params, {run['weight_bytes'] / 1e9:.2f} GB weights; "
            f"compile {run['compile_seconds']:.0f} s; peak RSS {run['peak_rss_gb']:.2f} GB "
            f"= {run['peak_rss_x_weights']:.2f}x weights; audit {run['audit_ok']}, parity {run['parity']['ok']}; "
            f"load {load[0]:.2f}"
        )
        for stage in ["build", *run["stage_seconds"]]:
            secs = run["stage_seconds"].get(stage, run["build_seconds"])
            anon, file = run["stage_peak_anon_file_gb"].get(stage, [0, 0])
            print(f"  {stage:12s} {secs:8.1f} s  peak {run['stage_peak_rss_gb'].get(stage, 0):6.2f} GB "
                  f"({run['stage_peak_rss_x_weights'].get(stage, 0):.2f}x; anon {anon:.2f} + file {file:.2f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
