"""``graphprune bench --device cuda`` and the backend's CUDA-graph options: the bookkeeping on CPU
(stand-in capturer, reference kernel), the real thing on a GPU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from graphprune.bench import bench_model, parse_token_counts
from graphprune.bench.report import BenchReport
from graphprune.bench.timing import _bench_cuda
from graphprune.errors import ConfigError, DependencyError
from graphprune.runtime.compare import compare_outputs
from graphprune.runtime.semi_cuda import Route, SemiSparseLinear, StandInCapturer
from graphprune.sparsity import nm_mask

CUDA = torch.cuda.is_available()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).eval()
    with torch.no_grad():
        for i in (0, 2):
            model[i].weight.mul_(nm_mask(model[i].weight, 2, 4, axis=1))
    return model


def test_parse_token_counts():
    assert parse_token_counts("4, 4096") == (4, 4096)
    assert parse_token_counts("") == ()
    with pytest.raises(ConfigError, match="--shapes: 'x'"):
        parse_token_counts("4,x")


def test_bench_cuda_options_are_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="device must be"):
        bench_model(_mlp(), (torch.randn(2, 64),), device="tpu", out_dir=tmp_path)
    with pytest.raises(ConfigError, match="torch runtime"):
        bench_model(_mlp(), (torch.randn(2, 64),), device="cuda", runtime="ort", out_dir=tmp_path)
    with pytest.raises(ConfigError, match="dtype"):
        bench_model(_mlp(), (torch.randn(2, 64),), device="cuda", dtype=torch.float32, out_dir=tmp_path)
    if not CUDA:
        with pytest.raises(DependencyError, match="CUDA GPU"):
            bench_model(_mlp(), (torch.randn(2, 64),), device="cuda", out_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing compiled or written


def test_bench_cuda_timing_bookkeeping_with_stand_ins():
    dense = _mlp()
    pruned = copy.deepcopy(dense)
    pruned[0] = SemiSparseLinear(dense[0].weight, dense[0].bias, routes={32: Route("sparse", 1, 1.2), 2: Route("dense")}, kernel="reference")
    x = (torch.randn(4, 8, 64),)
    rep = BenchReport(model="mlp", runtime="torch", pattern="2:4")
    cap = StandInCapturer()
    with torch.no_grad():
        _bench_cuda(dense, pruned, x, rep, mode="graph", blocks=2, warmup=1, per_layer=True, capturer=cap)
    assert set(rep.end_to_end) == {"dense", "pruned"} and rep.ratio is not None
    rows = {r.name: r for r in rep.layers}
    assert set(rows) == {"0", "2"} and rows["0"].op == "SemiSparseLinear"
    assert "routes {2: dense, 32: sparse}" in rows["0"].note
    assert all(r.dense_ms and r.pruned_ms for r in rows.values())
    assert "execution mode: graph" in rep.notes[0]
    assert cap.captures >= 2 + 2 * 2  # both models, then every layer dense and pruned (calibration graphs included)


def test_backend_cudagraphs_option_is_validated():
    from graphprune.backend import BackendOptions

    assert BackendOptions.from_options({"cudagraphs": False}).cudagraphs is False
    assert BackendOptions.from_options({"alg_cache": "x.json"}).forms_config("graph").mode == "graph"
    with pytest.raises(ConfigError, match="cudagraphs must be None"):
        BackendOptions.from_options({"cudagraphs": "yes"})


# ---- on a GPU -----------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (sm80+) with cuSPARSELt")


@pytest.mark.gpu
@gpu
def test_bench_on_cuda_graph_mode(tmp_path):
    from graphprune.config import CompileConfig, SemiStructured

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2048, 8192), nn.GELU(), nn.Linear(8192, 2048)).eval()
    cfg = CompileConfig(pattern=(SemiStructured(n=2, m=4),))
    rep = bench_model(model, (torch.randn(4, 512, 2048),), cfg, device="cuda", token_counts=(4,), out_dir=tmp_path, blocks=3, chart=False)
    assert rep.settings["mode"] == "graph" and rep.settings["dtype"] == "float16" and "cusparselt" in rep.settings
    assert rep.ratio is not None and {r.name for r in rep.layers} >= {"0", "2"}
    for f in rep.forms:
        for s in f.get("shapes", []):
            assert s["mode"] == "graph" and (s["chosen"] == "dense" or s["sparse_ms"] < s["dense_ms"])


@pytest.mark.gpu
@gpu
def test_backend_on_cuda_uses_graph_mode_and_matches_dense():
    from graphprune.backend import last_report, register

    register()
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2048, 8192), nn.GELU(), nn.Linear(8192, 2048)).cuda().half().eval()
    x = torch.randn(8, 512, 2048, device="cuda", dtype=torch.float16)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            if p.dim() == 2:
                p.mul_(nm_mask(p, 2, 4, axis=1))
        ref = reference(x)
        compiled = torch.compile(model, backend="graphprune", options={"pattern": "2:4"})
        outs = [compiled(x).clone() for _ in range(3)]  # warm-up, recording, replay
    rep = last_report()
    assert rep is not None and all(f.get("mode") == "graph" for f in rep.forms if "mode" in f)
    converted = [f for f in rep.forms if f.get("chosen") != "dense"]
    assert rep.compiler == ("inductor + CUDA graphs" if converted else "inductor")
    for out in outs:
        assert compare_outputs(ref, out).ok
