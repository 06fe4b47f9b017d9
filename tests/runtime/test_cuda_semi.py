"""The 2:4 GPU runtime (graphprune.runtime.semi_cuda): everything that runs without a GPU is tested
here with the reference kernel and the stand-in capturer; the cuSPARSELt checks are marked gpu."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphprune.errors import ConfigError, DependencyError, InputError, UnsupportedModelError
from graphprune.runtime.compare import compare_outputs
from graphprune.runtime.microbench import Timing, time_alternating
from graphprune.runtime.semi_cuda import (
    AlgCache,
    AlgEntry,
    CudaGraphRunner,
    Route,
    SemiSparseLinear,
    StandInCapturer,
    alg_key,
    load_semi_structured,
    save_semi_structured,
    use_capturer,
)
from graphprune.runtime.semi_cuda.algs import parse_alg_key
from graphprune.runtime.semi_cuda.kernels import KERNELS, ReferenceKernel
from graphprune.runtime.semi_cuda.linear import nearest_tokens
from graphprune.sparsity import nm_mask

ENV = {"gpu": "none", "reference": "reference", "torch": torch.__version__}
CUDA = torch.cuda.is_available()


def _w24(out_f: int, in_f: int, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=gen)
    return (w * nm_mask(w, 2, 4, axis=1)).to(device=device, dtype=dtype)


class _CountingKernel(ReferenceKernel):
    """The reference kernel, counting products per algorithm id."""

    name = "counting"

    def __init__(self) -> None:
        super().__init__(algs=3)
        self.calls: dict[int, int] = {}

    def mm(self, packed, x2, bias, alg_id, transpose=False):
        self.calls[alg_id] = self.calls.get(alg_id, 0) + 1
        return super().mm(packed, x2, bias, alg_id, transpose)


@pytest.fixture
def counting(monkeypatch):
    k = _CountingKernel()
    monkeypatch.setitem(KERNELS, "counting", k)
    return k


# ---- algorithm cache ------------------------------------------------------------------------------
def test_alg_cache_round_trip_and_keys(tmp_path):
    key = alg_key(11008, 4096, 4096, torch.float16, False)
    assert key == "float16|N=11008|K=4096|M=4096|bias=0"
    assert parse_alg_key(key) == ("float16", 11008, 4096, 4096, False)
    with pytest.raises(ValueError, match="not an algorithm-cache key"):
        parse_alg_key("float16|N=1|K=2")
    cache = AlgCache(tmp_path / "a.json", ENV)
    cache.put(key, AlgEntry(2, 0.35, 0.4, {"alg0": 0.4, "alg2t": 0.35}, transpose=True))
    assert cache.dirty
    cache.save()
    back = AlgCache.load(tmp_path / "a.json", ENV)
    assert back.stale is None and len(back) == 1
    e = back.get(key)
    assert e is not None and (e.alg_id, e.transpose, e.ms, e.default_ms, e.candidates) == (2, True, 0.35, 0.4, {"alg0": 0.4, "alg2t": 0.35})
    assert AlgCache.load(tmp_path / "missing.json", ENV).entries == {}
    with pytest.raises(InputError, match="does not exist"):
        AlgCache.load(tmp_path / "missing.json", ENV, missing_ok=False)


def test_alg_cache_from_another_machine_is_dropped_not_trusted(tmp_path):
    cache = AlgCache(tmp_path / "a.json", ENV)
    cache.put(alg_key(64, 64, 8, "bfloat16", True), AlgEntry(1))
    cache.save()
    other = AlgCache.load(tmp_path / "a.json", {**ENV, "gpu": "NVIDIA H200"})
    assert len(other) == 0 and other.stale is not None and "gpu" in other.stale


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not readable JSON"),
        ('{"format": "other/1", "env": {}, "entries": {}}', "format 'other/1'"),
        ('{"format": "graphprune.semi-algs/1", "env": [], "entries": {}}', "must be objects"),
        ('{"format": "graphprune.semi-algs/1", "env": {}, "entries": {"bad key": {"alg_id": 0}}}', "entry 'bad key'"),
        ('{"format": "graphprune.semi-algs/1", "env": {}, "entries": {"float16|N=1|K=4|M=8|bias=0": {"alg_id": -1}}}', "alg_id must be an int >= 0"),
        ('{"format": "graphprune.semi-algs/1", "env": {}, "entries": {"float16|N=1|K=4|M=8|bias=0": {"alg_id": 1, "ms": "x"}}}', "ms must be a number"),
        ('{"format": "graphprune.semi-algs/1", "env": {}, "entries": {"float16|N=1|K=4|M=8|bias=0": {"alg_id": 1, "transpose": 1}}}', "transpose must be"),
    ],
)
def test_corrupted_alg_cache_is_a_one_line_error_naming_the_file(tmp_path, text, match):
    p = tmp_path / "alg_cache.json"
    p.write_text(text)
    with pytest.raises(InputError, match=match) as info:
        AlgCache.load(p, ENV)
    assert str(p) in str(info.value) and "\n" not in str(info.value)


# ---- routes and the layer ---------------------------------------------------------------------------
def test_route_validation_and_nearest_token_count():
    assert Route.from_dict({"form": "dense", "ratio": 0.5}) == Route("dense", 0, 0.5)
    assert Route.from_dict(Route("sparse", 3, 1.2, True).to_dict()) == Route("sparse", 3, 1.2, True)
    with pytest.raises(ConfigError, match="transpose"):
        Route("sparse", 0, None, "yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="form"):
        Route("csr")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="alg_id"):
        Route("sparse", -1)
    with pytest.raises(InputError, match="route for 4"):
        Route.from_dict({"form": "sparse", "alg_id": "x"}, "route for 4")
    assert nearest_tokens([4, 4096], 1) == 4
    assert nearest_tokens([4, 4096], 64) == 4  # log2 distance 4 vs 6
    assert nearest_tokens([4, 4096], 1024) == 4096
    assert nearest_tokens([4, 16], 8) == 16  # a tie goes to the larger count


@pytest.mark.parametrize("bias", [True, False])
def test_semi_sparse_linear_matches_f_linear_and_follows_routes(counting, bias):
    w = _w24(32, 64)
    b = torch.randn(32) if bias else None
    layer = SemiSparseLinear(w, b, routes={8: Route("sparse", 2, 1.3), 2: Route("dense", 0, 0.5)}, kernel="counting")
    x = torch.randn(2, 4, 64)  # 8 rows -> sparse with alg 2
    assert compare_outputs(F.linear(x, w, b), layer(x)).ok
    assert counting.calls == {2: 1}
    y = layer(torch.randn(2, 64))  # 2 rows -> dense: no kernel call
    assert y.shape == (2, 32) and counting.calls == {2: 1}
    assert layer.weight_dense is not None  # kept because a route is dense
    assert torch.equal(layer.dense_weight(), w)
    transposed = SemiSparseLinear(w, b, routes={8: Route("sparse", 1, None, True)}, kernel="counting")
    y_t, y_v = transposed(x), layer(x)
    assert y_t.is_contiguous() and not y_v.is_contiguous()  # the two kernel layouts: contiguous, transposed view
    assert compare_outputs(y_t, y_v).ok
    counting.calls.clear()
    all_sparse = SemiSparseLinear(w, b, routes={8: Route("sparse", 1)}, kernel="counting")
    assert all_sparse.weight_dense is None and all_sparse.route(3).alg_id == 1
    assert torch.equal(all_sparse.dense_weight(chunk=24), w)  # recovered through the kernel, in chunks
    assert "8:sparse@alg1" in repr(all_sparse)
    all_sparse.with_routes({8: Route("dense")})
    assert all_sparse.weight_dense is not None and torch.equal(all_sparse.weight_dense, w)


def test_semi_sparse_linear_refuses_bad_inputs_and_casts():
    w = _w24(16, 32)
    with pytest.raises(ConfigError, match="2-D floating"):
        SemiSparseLinear(w[0], kernel="reference")
    with pytest.raises(ConfigError, match="bias shape"):
        SemiSparseLinear(w, torch.zeros(3), kernel="reference")
    with pytest.raises(ConfigError, match="unknown semi-structured kernel"):
        SemiSparseLinear(w, kernel="nope")
    with pytest.raises(ConfigError, match="token count"):
        SemiSparseLinear(w, routes={0: Route()}, kernel="reference")
    layer = SemiSparseLinear(w, kernel="reference")
    with pytest.raises(ConfigError, match="packed for torch.float32"):
        layer.half()
    layer.to("cpu")  # same dtype and device: allowed
    layer.eval()


def test_cusparselt_kernel_needs_cuda():
    if CUDA:
        pytest.skip("checks the error raised without a GPU")
    with pytest.raises(DependencyError, match="CUDA"):
        SemiSparseLinear(_w24(32, 64, dtype=torch.float16))


# ---- graphs -----------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.calls = 0

    def forward(self, x, *, scale: float = 1.0):
        self.calls += 1
        return {"y": self.fc(x) * scale, "n": x.shape[0]}


def test_graph_runner_one_capture_per_signature_and_fresh_inputs():
    torch.manual_seed(0)
    net = _Net()
    cap = StandInCapturer()
    run = CudaGraphRunner(net, capturer=cap, max_graphs=2, name="net")
    x1, x2 = torch.randn(3, 8), torch.randn(3, 8)
    with torch.no_grad():
        assert compare_outputs(net.fc(x1), run(x1)["y"]).ok
        assert compare_outputs(net.fc(x2), run(x2)["y"]).ok  # same shape: replayed with the new input
        assert compare_outputs(net.fc(x2) * 2, run(x2, scale=2.0)["y"]).ok  # another non-tensor argument: another graph
    assert run.stats.captures == 2 and cap.captures == 2 and run.stats.replays == 3
    run(torch.randn(5, 8))  # a third signature evicts the least recently used
    assert len(run) == 2 and run.stats.evictions == 1
    assert run(x1)["n"] == 3 and run.stats.captures == 4  # x1's graph was evicted: captured again
    assert run.module is net


def test_graph_runner_outputs_alias_only_when_asked():
    net = _Net()
    shared = CudaGraphRunner(net, capturer=StandInCapturer(), clone_outputs=False)
    a = shared(torch.ones(2, 8))["y"]
    b = shared(torch.zeros(2, 8))["y"]
    assert a.data_ptr() == b.data_ptr()  # the graph's static output, overwritten by the next replay
    assert torch.equal(a, b)
    cloned = CudaGraphRunner(net, capturer=StandInCapturer())
    c = cloned(torch.ones(2, 8))["y"]
    d = cloned(torch.zeros(2, 8))["y"]
    assert c.data_ptr() != d.data_ptr() and not torch.equal(c, d)


def test_graph_runner_errors_name_the_model():
    class Bad(nn.Module):
        def forward(self, x):
            raise RuntimeError("operation not permitted when stream is capturing")

    run = CudaGraphRunner(Bad(), capturer=StandInCapturer(), name="my-model")
    with pytest.raises(UnsupportedModelError, match=r"my-model: could not capture a stand-in for inputs \(\[2, 3\]:float32\)"):
        run(torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="not hashable"):
        CudaGraphRunner(_Net(), capturer=StandInCapturer())(torch.zeros(2, 8), scale={1.0})
    with pytest.raises(ConfigError, match="max_graphs"):
        CudaGraphRunner(_Net(), max_graphs=0)
    if not CUDA:
        with pytest.raises(DependencyError, match="CUDA GPU"):
            CudaGraphRunner(_Net())(torch.zeros(2, 8))


def test_time_alternating_graph_mode_counts_copies_per_replay():
    calls = {"a": 0}

    def a():
        calls["a"] += 1
        return torch.ones(2)

    cap = StandInCapturer(warmup=0)
    t = time_alternating({"a": a}, warmup=0, blocks=2, min_block_s=0.0, mode="graph", capturer=cap, graph_target_s=1.0, max_graph_reps=4)
    assert t["a"].graph_reps == 4 and len(t["a"].samples_ms) == 2  # a slow-enough copy is never reached: capped
    assert cap.captures == 2  # the calibration graph, then the 4-copy graph
    assert t["a"].to_dict()["graph_reps"] == 4
    with pytest.raises(ValueError, match="mode"):
        time_alternating({"a": a}, mode="jit")  # type: ignore[arg-type]


# ---- the pre-flight decision, with fake timings ---------------------------------------------------------
def _fake_timer(ratios: dict[int, float], calls: list[tuple[int, str, tuple[str, ...]]]):
    """time_alternating stand-in: dense 1.0 ms; a sparse configuration at 1/ratio[tokens] ms, alg 0 10%
    slower, a transposed-layout one ("...t") 5% faster."""

    def fake(fns, *, mode="eager", **_):
        first = next(iter(fns.values()))
        tokens = first.args[0].reshape(-1, first.args[0].shape[-1]).shape[0]
        calls.append((tokens, mode, tuple(fns)))
        out = {"dense": Timing([1.0])}
        for name in fns:
            if name.startswith("alg"):
                out[name] = Timing([1.0 / ratios[tokens] * (1.1 if name == "alg0" else 0.95 if name.endswith("t") else 1.0)])
        return out

    return fake


def _two_layer_model() -> tuple[nn.Module, tuple[torch.Tensor]]:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)).eval()
    with torch.no_grad():
        for i in (0, 2):
            model[i].weight.copy_(_w24(64, 64, seed=i))
    return model.bfloat16(), (torch.randn(4, 16, 64).bfloat16(),)  # the 2:4 kernels are fp16/bf16


def test_preflight_decides_per_token_count_in_graph_mode(monkeypatch, tmp_path):
    from graphprune.passes import convert_sparse_forms as csf
    from graphprune.runtime import microbench

    calls: list = []
    monkeypatch.setattr(microbench, "time_alternating", _fake_timer({64: 1.3, 4: 0.5}, calls))
    model, x = _two_layer_model()
    with torch.no_grad():
        ref = model(*x)
    opts = csf.SparseFormsConfig(mode="graph", token_counts=(4,), target="cuda", semi_kernel="reference", alg_cache=str(tmp_path / "algs.json"))
    rep = csf.apply_sparse_forms(model, x, opts)
    assert [lf.chosen for lf in rep.layers] == ["semi_structured", "semi_structured"]
    lf = rep.layers[0]
    assert lf.mode == "graph" and [s["tokens"] for s in lf.shapes] == [64, 4]
    prefill, decode = lf.shapes
    assert prefill["chosen"] == "semi_structured" and (prefill["alg_id"], prefill["transpose"]) == (1, True)
    assert prefill["ratio"] == pytest.approx(1.3 / 0.95)
    assert set(prefill["forms_ms"]) == {"dense", "alg0", "alg2", "alg1t"}  # alg 0 and each layout's searched alg
    assert decode["chosen"] == "dense" and decode["ratio"] == pytest.approx(0.5 / 0.95)
    assert "64 tokens: 1.37x -> sparse (alg 1, transposed)" in lf.reason and "4 tokens: 0.53x -> dense" in lf.reason
    # the second layer has the same shape: its timings are shared, not re-taken
    assert len(calls) == 2 and all(mode == "graph" for _, mode, _ in calls)
    assert rep.layers[1].shapes[0]["shared_with"] == "0"
    layer = model[0]
    assert isinstance(layer, SemiSparseLinear) and layer.routes[64] == Route("sparse", 1, pytest.approx(1.3 / 0.95), True)
    assert layer.routes[4].form == "dense" and layer.weight_dense is not None
    with torch.no_grad():
        assert compare_outputs(ref, model(*x)).ok
    saved = json.loads((tmp_path / "algs.json").read_text())
    assert set(saved["entries"]) == {"bfloat16|N=64|K=64|M=64|bias=1", "bfloat16|N=64|K=64|M=4|bias=1"}
    # a second pre-flight reads the cache: no search, only the cached algorithm is timed
    calls.clear()
    model2, _ = _two_layer_model()
    csf.apply_sparse_forms(model2, x, opts)
    assert calls and all(names == ("dense", "alg0", "alg1t") for _, _, names in calls)


@pytest.mark.parametrize("min_speedup", [0.5, 1.05])
def test_preflight_never_chooses_a_form_slower_than_dense(monkeypatch, min_speedup):
    from graphprune.passes import convert_sparse_forms as csf
    from graphprune.runtime import microbench

    monkeypatch.setattr(microbench, "time_alternating", _fake_timer({64: 0.9}, []))  # best configuration 0.95x
    model, x = _two_layer_model()
    opts = csf.SparseFormsConfig(mode="eager", target="cuda", semi_kernel="reference", min_speedup=min_speedup)
    rep = csf.apply_sparse_forms(model, x, opts)
    assert all(lf.chosen == "dense" and lf.reason.startswith("kept dense: eager mode, needs >= 1.") for lf in rep.layers)
    assert type(model[0]) is nn.Linear


def test_preflight_config_errors():
    from graphprune.passes.convert_sparse_forms import SparseFormsConfig

    with pytest.raises(ConfigError, match="mode"):
        SparseFormsConfig(mode="compiled")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="token_counts"):
        SparseFormsConfig(token_counts=(0,))
    with pytest.raises(ConfigError, match="semi_kernel"):
        SparseFormsConfig(semi_kernel="cutlass")
    with pytest.raises(ConfigError, match="target"):
        SparseFormsConfig(target="tpu")  # type: ignore[arg-type]
    assert SparseFormsConfig(token_counts=4).token_counts == (4,)  # type: ignore[arg-type]


# ---- the artifact ----------------------------------------------------------------------------------
def test_artifact_round_trip_on_cpu_with_stand_ins(monkeypatch, tmp_path):
    from graphprune.passes import convert_sparse_forms as csf
    from graphprune.runtime import microbench

    monkeypatch.setattr(microbench, "time_alternating", _fake_timer({64: 1.3, 4: 0.5}, []))
    model, x = _two_layer_model()
    with torch.no_grad():
        ref = model(*x)
    opts = csf.SparseFormsConfig(mode="graph", token_counts=(4,), target="cuda", semi_kernel="reference")
    rep = csf.build_semi_structured_artifact(model, x, tmp_path / "art", opts)
    assert len(rep.converted) == 2
    files = sorted(p.name for p in (tmp_path / "art").iterdir())
    assert files == ["alg_cache.json", "semi_plan.json", "weights.safetensors"]
    plan = json.loads((tmp_path / "art" / "semi_plan.json").read_text())
    assert plan["layers"]["0"]["routes"]["4"]["form"] == "dense" and plan["layers"]["2"]["routes"]["64"]["alg_id"] == 1
    assert plan["layers"]["2"]["routes"]["64"]["transpose"] is True

    def base() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))  # fp32: the weights' dtype comes from the file

    with use_capturer(StandInCapturer()) as cap:
        run = load_semi_structured(tmp_path / "art", base, device="cpu")
        with torch.no_grad():
            out = run(*x)
            out2 = run(*x)
    assert cap.captures == 1 and isinstance(run.module[2], SemiSparseLinear)
    assert torch.equal(out, out2) and compare_outputs(ref, out).ok
    eager = load_semi_structured(tmp_path / "art", base, device="cpu", graphs=False)
    assert eager[0].routes[4].form == "dense"
    # writing again over an artifact replaces it; over an unrelated folder is refused
    save_semi_structured(eager, tmp_path / "art")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    from graphprune.errors import OutputError

    with pytest.raises(OutputError, match="not an earlier semi-structured artifact"):
        save_semi_structured(eager, tmp_path / "other")
    with pytest.raises(InputError, match="no SemiSparseLinear"):
        save_semi_structured(base(), tmp_path / "empty")


def test_artifact_bad_inputs_are_named(tmp_path):
    model = nn.Sequential(nn.Linear(64, 32))
    model[0] = SemiSparseLinear(_w24(32, 64), torch.zeros(32), routes={8: Route("sparse", 1)}, kernel="reference")
    art = save_semi_structured(model, tmp_path / "a")
    class NotLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(32, 64))
            self.bias = nn.Parameter(torch.zeros(32))

    with pytest.raises(InputError, match=r"layer '0': expected nn.Linear 64->32, found NotLinear"):
        load_semi_structured(art, lambda: nn.Sequential(NotLinear()), device="cpu", kernel="reference")
    with pytest.raises(InputError, match=r"does not match Sequential: missing \['1.bias', '1.weight'\]"):
        load_semi_structured(art, lambda: nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 32)), device="cpu")
    plan = art / "semi_plan.json"
    good = plan.read_text()
    plan.write_text(good.replace('"alg_id": 1', '"alg_id": "fast"'))
    with pytest.raises(InputError, match=r"semi_plan.json, layer '0', route 8: Route.alg_id must be an int"):
        load_semi_structured(art, lambda: nn.Sequential(nn.Linear(64, 32)), device="cpu")
    plan.write_text("[]")
    with pytest.raises(InputError, match="format 'list'"):
        load_semi_structured(art, lambda: nn.Sequential(nn.Linear(64, 32)), device="cpu")
    plan.write_text(good)
    weights = art / "weights.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="checksum"):
        load_semi_structured(art, lambda: nn.Sequential(nn.Linear(64, 32)), device="cpu", kernel="reference")


# ---- on a GPU -----------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (sm80+) with cuSPARSELt")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens", [4, 200, 1024])
def test_cusparselt_layer_matches_dense(dtype, tokens):
    w = _w24(256, 512, dtype=dtype, device="cuda")
    b = torch.randn(256, device="cuda", dtype=dtype)
    layer = SemiSparseLinear(w, b)
    x = torch.randn(tokens, 512, device="cuda", dtype=dtype)
    ref = F.linear(x.double(), w.double(), b.double()).to(dtype)
    assert compare_outputs(ref, layer(x), dtype=str(dtype).removeprefix("torch.")).ok
    for transpose in (False, True):
        alg = layer._kernel.search(layer.packed, x, layer.bias, transpose)
        if alg is None:  # a search kernels.py skips (fp16, transposed)
            assert (dtype, transpose) == (torch.float16, True)
            alg = 0
        assert 0 <= alg <= (layer._kernel.max_alg_id() or alg)
        assert compare_outputs(ref, layer.sparse_mm(x, alg, transpose)).ok
    assert torch.equal(layer.dense_weight(), w)  # exact recovery through the identity


@pytest.mark.gpu
@gpu
def test_graph_mode_preflight_and_runner_on_gpu(tmp_path):
    from graphprune.passes.convert_sparse_forms import SparseFormsConfig, build_semi_structured_artifact

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2048, 8192), nn.GELU(), nn.Linear(8192, 2048)).cuda().half().eval()
    with torch.no_grad():
        for i in (0, 2):
            model[i].weight.mul_(nm_mask(model[i].weight, 2, 4, axis=1))
    x = (torch.randn(8, 512, 2048, device="cuda", dtype=torch.float16),)
    with torch.no_grad():
        ref = model(*x)
    opts = SparseFormsConfig(mode="graph", token_counts=(8,), blocks=5, alg_cache=str(tmp_path / "algs.json"))
    try:
        rep = build_semi_structured_artifact(model, x, tmp_path / "art", opts)
    except InputError:
        pytest.skip("no layer measured faster as 2:4 on this GPU")
    for lf in rep.layers:
        for s in lf.shapes:  # the chosen form is never slower than dense in the pre-flight's own timing
            assert s["chosen"] == "dense" or s["sparse_ms"] < s["dense_ms"]
    run = CudaGraphRunner(model)
    with torch.no_grad():
        assert compare_outputs(ref, run(*x)).ok
        assert compare_outputs(ref, run(*x)).ok
        loaded = load_semi_structured(tmp_path / "art", lambda: nn.Sequential(nn.Linear(2048, 8192), nn.GELU(), nn.Linear(8192, 2048)))
        assert compare_outputs(ref, loaded(*x)).ok
        assert loaded(x[0][:1, :1]).shape == (1, 1, 2048)  # a decode-sized call: its own graph and route
    assert loaded.stats.captures == 2
