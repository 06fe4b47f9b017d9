"""``graphprune bench``: dense vs pruned timings, table, JSON and PNG chart."""

from __future__ import annotations

import argparse
import importlib.util
import json

import pytest
import torch

from graphprune.bench import BenchReport, LayerTiming, add_bench_parser, bench_model, run_bench, save_chart
from graphprune.config import CompileConfig, parse_pattern
from graphprune.errors import ConfigError, DependencyError
from models.zoo import build


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphprune")
    sub = p.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    return p


def test_torch_runtime_end_to_end_and_per_layer(tmp_path):
    model, inputs = build("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = CompileConfig(pattern=parse_pattern("unstructured:0.9"))
    rep = bench_model(model, inputs, config, runtime="torch", out_dir=tmp_path, blocks=2, warmup=1)
    assert set(rep.end_to_end) == {"dense", "pruned"} and rep.ratio is not None and rep.ratio > 0
    assert {lay.name for lay in rep.layers} == {"layers.0", "layers.2", "layers.4"}
    assert all(lay.dense_ms and lay.pruned_ms for lay in rep.layers)
    assert len(rep.forms) == 3 and all("reason" in f for f in rep.forms)
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["runtime"] == "torch" and data["settings"]["threads"] == 2 and data["settings"]["torch"] == torch.__version__
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "report.json").is_file()
    assert "end to end" in rep.table()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # caller's model untouched


def test_ort_runtime_one_session_at_a_time(tmp_path):
    model, inputs = build("mlp")
    rep = bench_model(model, inputs, CompileConfig(pattern=parse_pattern("ffn:0.5")), runtime="ort", out_dir=tmp_path, blocks=2, warmup=1)
    assert rep.end_to_end["dense"]["median_ms"] > 0 and rep.end_to_end["pruned"]["median_ms"] > 0
    assert rep.layers and all(lay.op for lay in rep.layers)  # per-node kernel times from the profiler
    assert any("one session alive at a time" in n for n in rep.notes)
    assert (tmp_path / "dense.onnx").is_file() and (tmp_path / "model.onnx").is_file()
    assert rep.settings["flops"] > 0


def test_cli_parser_and_handler(tmp_path, capsys):
    args = _parser().parse_args(
        ["bench", "models.zoo:mlp", "--pattern", "2:4", "--runtime", "torch", "-o", str(tmp_path / "b"),
         "--blocks", "2", "--warmup", "1", "--no-per-layer", "--no-sparse-forms"]
    )
    assert args.handler is run_bench
    assert run_bench(args) == 0
    out = capsys.readouterr().out
    assert "end to end" in out and "bench.png" in out


def test_bad_runtime_and_missing_tensorrt(tmp_path):
    model, inputs = build("mlp")
    with pytest.raises(ConfigError, match="runtime"):
        bench_model(model, inputs, runtime="tvm", out_dir=tmp_path)  # type: ignore[arg-type]
    if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
        with pytest.raises(DependencyError):
            bench_model(model, inputs, runtime="tensorrt", out_dir=tmp_path)


def test_chart_without_layers(tmp_path):
    rep = BenchReport("m", "torch", "2:4", end_to_end={"dense": {"min_ms": 1.0, "median_ms": 1.1}, "pruned": {"min_ms": 0.5, "median_ms": 0.6}})
    rep.layers.append(LayerTiming("x", dense_ms=None))
    path = save_chart(rep, tmp_path / "c.png")
    assert path.stat().st_size > 1000
