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


def _e2e(dense: list[float], pruned: list[float]) -> dict[str, dict[str, float]]:
    import statistics

    return {k: {"min_ms": min(v), "median_ms": statistics.median(v), "max_ms": max(v)} for k, v in (("dense", dense), ("pruned", pruned))}


def test_verdict_says_which_way_and_warns_when_the_spread_exceeds_the_effect():
    clear = BenchReport("m", "torch", "2:4", end_to_end=_e2e([2.0, 2.02, 2.04], [1.0, 1.01, 1.02]))
    assert clear.ratio == pytest.approx(2.02 / 1.01) and clear.conclusive is True
    assert clear.verdict() == "pruned is 2.00x faster than dense" and "verdict: pruned is 2.00x faster" in clear.table()
    slower = BenchReport("m", "torch", "2:4", end_to_end=_e2e([1.0, 1.0, 1.0], [1.5, 1.5, 1.5]))
    assert "1.50x SLOWER" in slower.verdict() and slower.conclusive is True
    noisy = BenchReport("m", "torch", "2:4", end_to_end=_e2e([1.0, 1.05, 1.6], [0.9, 1.0, 1.4]))
    assert noisy.spread("dense") == pytest.approx(0.6 / 1.05) and noisy.conclusive is False
    assert noisy.verdict().startswith("no clear difference") and "warning: no clear difference" in noisy.table()
    d = noisy.to_dict()
    assert d["conclusive"] is False and d["spread"]["pruned"] == pytest.approx(0.5) and d["verdict"] == noisy.verdict()


def test_measured_bench_records_every_block_and_the_spread(tmp_path):
    model, inputs = build("mlp")
    rep = bench_model(model, inputs, runtime="torch", out_dir=tmp_path, blocks=3, warmup=1, per_layer=False, chart=False)
    for side in ("dense", "pruned"):
        t = rep.end_to_end[side]
        assert len(t["samples_ms"]) == 3 and t["min_ms"] == min(t["samples_ms"]) and t["max_ms"] == max(t["samples_ms"])
        assert rep.spread(side) == pytest.approx((t["max_ms"] - t["min_ms"]) / t["median_ms"])


def test_bench_times_what_compile_wrote(tmp_path, capsys):
    from graphprune.cli import main

    out = tmp_path / "compiled"
    assert main(["compile", "models.zoo:mlp", "--pattern", "unstructured:0.9", "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    for runtime in ("torch", "ort"):
        b = tmp_path / f"bench-{runtime}"
        assert main(["bench", "models.zoo:mlp", "--compiled", str(out), "--runtime", runtime, "-o", str(b),
                     "--blocks", "2", "--warmup", "1", "--no-per-layer"]) == 0
        data = json.loads((b / "bench.json").read_text())
        assert data["pattern"] == "unstructured:0.9" and data["ratio"] > 0
        assert any("not pruned again" in n for n in data["notes"]) and not (b / "report.json").exists()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the compiled folder is read, never written
    assert main(["bench", "models.zoo:mlp", "--compiled", str(out), "-o", str(out)]) == 7  # would overwrite its input
    assert main(["bench", "models.zoo:mlp", "--compiled", str(tmp_path / "none"), "-o", str(tmp_path / "x")]) == 3
    assert "not a folder" in capsys.readouterr().err
