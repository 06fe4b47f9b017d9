"""2:4 on an NVIDIA GPU (issue 13): every figure of the issue's "Done when", in one command, no network.

    python benchmarks/gpu_semi.py --out DIR [--steps env,layers,e2e,compile] [--dry-run]

Steps (each writes ``DIR/<step>.json`` and prints a table; every figure carries the GPU model,
driver, torch, CUDA and cuSPARSELt versions, dtype and execution mode):

``layers``   Llama-7B shapes (FFN 4096->11008, 11008->4096, gate+up fused 4096->22016; attention
             4096->4096, q/k/v fused 4096->12288) at 1024 and 4096 tokens, fp16 and bf16: dense
             ``F.linear`` vs 2:4 (``SemiSparseLinear``: cuSPARSELt, algorithm 0 and the searched one),
             eager and replayed from CUDA graphs; output checked against dense (one tolerance policy).
``e2e``      a Llama-shaped ~1B decoder (transformers LlamaConfig: hidden 2048, 22 layers, 32 heads /
             4 KV heads, FFN 5632, vocab 32000, random weights, sdpa attention), every decoder Linear
             pruned 2:4 (lm_head and embeddings dense), converted by the graph-mode pre-flight
             (``apply_sparse_forms(mode="graph", token_counts=(4,))``: prefill and decode decided
             separately), prefill batch 4 x 1024 timed dense vs 2:4, both replayed from CUDA graphs;
             then the decode shape (batch 4 x 1 token, no KV cache) the same way. Variants: unfused,
             and gate/up fused (the dense model fused too); fp16 and bf16 as the budget allows.
``compile``  ``torch.compile``: inductor ``mode="reduce-overhead"`` on the dense model vs
             ``backend="graphprune", options={"pattern": "2:4"}`` (CUDA graphs automatic), 4
             Llama-shaped layers, prefill 4 x 1024, bf16: compile time (first call) and speed.

``--dry-run`` runs every step on the CPU with tiny shapes, the reference kernel and the stand-in
capturer, so that a typo cannot cost GPU time; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphprune.bench.timing import gpu_info
from graphprune.passes.convert_sparse_forms import SparseFormsConfig, apply_sparse_forms
from graphprune.runtime.compare import compare_outputs
from graphprune.runtime.microbench import speedup, time_alternating
from graphprune.runtime.semi_cuda import CudaGraphRunner, SemiSparseLinear, StandInCapturer, use_capturer
from graphprune.sparsity import nm_mask

LAYER_SHAPES = {
    "ffn up/gate 4096->11008": (4096, 11008),
    "ffn down 11008->4096": (11008, 4096),
    "ffn gate+up fused 4096->22016": (4096, 22016),
    "attn q/o 4096->4096": (4096, 4096),
    "attn qkv fused 4096->12288": (4096, 12288),
}
TINY_LAYER_SHAPES = {"ffn up/gate 64->128": (64, 128), "ffn down 128->64": (128, 64)}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        self.device = "cpu" if self.dry else "cuda"
        self.kernel = "reference" if self.dry else "cusparselt"
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.env = environment(self.dry)
        self.blocks = 2 if self.dry else args.blocks

    def save(self, name: str, data: Any) -> None:
        (self.out / f"{name}.json").write_text(json.dumps({"env": self.env, **data}, indent=1, default=str))
        log(f"wrote {self.out / (name + '.json')}")


def environment(dry: bool) -> dict[str, Any]:
    env: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "dry_run": dry}
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    env.update(gpu_info())
    try:  # option (b), persistent cuSPARSELt plans: which bindings this machine has
        import importlib.util

        env["nvmath"] = "installed" if importlib.util.find_spec("nvmath") else "not installed"
        from cupy_backends.cuda.libs import cusparselt as cupy_cusparselt  # type: ignore[import-not-found]

        get = getattr(cupy_cusparselt, "get_version", None)
        env["cupy_cusparselt"] = f"importable, version {get()}" if get else "importable"
    except Exception as e:
        env["cupy_cusparselt"] = f"unavailable: {type(e).__name__}: {str(e)[:160]}"
    if not dry and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["sm_count"] = p.multi_processor_count
        env["memory_gib"] = round(p.total_memory / 2**30, 1)
    return env


def w24(out_f: int, in_f: int, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=gen, device=device, dtype=torch.float32)
    return (w * nm_mask(w, 2, 4, axis=1)).to(dtype)


def timed(fns: dict[str, Callable[[], Any]], ctx: Ctx, mode: str, min_block_s: float = 0.02) -> dict[str, Any]:
    return time_alternating(fns, warmup=2, blocks=ctx.blocks, min_block_s=0.0 if ctx.dry else min_block_s, sync=not ctx.dry, mode=mode)  # type: ignore[arg-type]


# ---- step: layers -----------------------------------------------------------------------------------------
def step_layers(ctx: Ctx) -> None:
    shapes = TINY_LAYER_SHAPES if ctx.dry else LAYER_SHAPES
    tokens_list = (16, 32) if ctx.dry else (1024, 4096)
    rows: list[dict[str, Any]] = []
    for dname in ctx.args.dtypes.split(","):
        dtype = DTYPES[dname]
        for sname, (k, n) in shapes.items():
            for tokens in tokens_list:
                w = w24(n, k, dtype, ctx.device)
                gen = torch.Generator(device=ctx.device).manual_seed(1)
                x = torch.randn(tokens, k, generator=gen, device=ctx.device, dtype=torch.float32).to(dtype)
                layer = SemiSparseLinear(w, None, kernel=ctx.kernel)
                fns: dict[str, Callable[[], Any]] = {"dense": functools.partial(F.linear, x, w)}
                checks: dict[str, bool] = {}
                with torch.no_grad():
                    ref = F.linear(x, w)
                    cfgs = [(0, False)]  # what to_sparse_semi_structured runs
                    for transpose in (False, True):
                        found = layer._kernel.search(layer.packed, x, None, transpose)  # None: skipped (kernels.py)
                        if found is not None:
                            cfgs.append((found, transpose))
                    for a, tr in dict.fromkeys(cfgs):
                        name = f"sparse_alg{a}{'t' if tr else ''}"
                        checks[name] = compare_outputs(ref, layer.sparse_mm(x, a, tr)).ok
                        fns[name] = functools.partial(layer.sparse_mm, x, a, tr)
                row: dict[str, Any] = {"shape": sname, "in": k, "out": n, "tokens": tokens, "dtype": dname, "configs": list(checks),
                                       "numbers_ok": all(checks.values()), "checks": checks, "flops": 2 * tokens * k * n}
                for mode in ("eager", "graph"):
                    t = timed(fns, ctx, mode)
                    best = min((f for f in t if f != "dense"), key=lambda f: t[f].median_ms)
                    row[mode] = {f: v.to_dict() for f, v in t.items()}
                    row[mode]["best"] = best
                    row[mode]["ratio_alg0"] = speedup(t["dense"], t["sparse_alg0"])
                    row[mode]["ratio_best"] = speedup(t["dense"], t[best])
                rows.append(row)
                ctx.save(f"layers_{ctx.args.dtypes.replace(',', '_')}", {"rows": rows, "partial": True})  # kept if a later row fails
                log(f"layers {dname} {sname} x{tokens}: eager {row['eager']['ratio_best']:.2f}x, graph {row['graph']['ratio_best']:.2f}x "
                    f"({row['graph']['best']}; alg0 {row['graph']['ratio_alg0']:.2f}x), dense graph {row['graph']['dense']['median_ms']:.3f} ms, numbers ok {row['numbers_ok']}")
                del layer, w, x, ref
    print_layers(rows)
    ctx.save(f"layers_{ctx.args.dtypes.replace(',', '_')}", {"rows": rows, "note": "ratio = dense median / 2:4 median (>1: 2:4 faster); graph = CUDA-graph replay, copies per replay in graph_reps"})


def print_layers(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'dtype':<5} {'shape':<30} {'tokens':>6} {'dense ms':>9} {'2:4 ms':>8} {'graph x':>8} {'alg0 x':>7} {'eager x':>8} alg")
    for r in rows:
        g, e = r["graph"], r["eager"]
        print(f"{r['dtype']:<5} {r['shape']:<30} {r['tokens']:>6} {g['dense']['median_ms']:>9.3f} {g[g['best']]['median_ms']:>8.3f} "
              f"{g['ratio_best']:>8.2f} {g['ratio_alg0']:>7.2f} {e['ratio_best']:>8.2f} {g['best']}")


# ---- step: end to end ----------------------------------------------------------------------------------------
class FusedGateUpMLP(nn.Module):
    """LlamaMLP with gate_proj and up_proj as one Linear (``gate_up``): ``down(act(g) * u)``."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        g, u = mlp.gate_proj, mlp.up_proj
        self.gate_up = nn.Linear(g.in_features, 2 * g.out_features, bias=False, device=g.weight.device, dtype=g.weight.dtype)
        with torch.no_grad():
            self.gate_up.weight.copy_(torch.cat([g.weight, u.weight], 0))
        self.down_proj = mlp.down_proj
        self.act_fn = mlp.act_fn
        self.inter = g.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gu = self.gate_up(x)
        return self.down_proj(self.act_fn(gu[..., : self.inter]) * gu[..., self.inter :])


def llama(ctx: Ctx, dtype: torch.dtype, layers: int | None = None) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    if ctx.dry:
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers or 2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, attn_implementation="sdpa")
    else:
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers or 22, num_attention_heads=32,
                          num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = LlamaForCausalLM(cfg)
    return model.to(dtype).eval()


def prune_decoder(model: nn.Module, *, head: bool = False) -> int:
    """2:4 (magnitude, along K) every Linear of the decoder layers (and lm_head when ``head``)."""
    n = 0
    with torch.no_grad():
        for name, mod in model.named_modules():
            if type(mod) is nn.Linear and (name.startswith("model.layers.") or (head and name == "lm_head")):
                mod.weight.mul_(nm_mask(mod.weight, 2, 4, axis=1))
                n += 1
    return n


def logits_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, use_cache=False).logits

    return run


def e2e_variant(ctx: Ctx, dname: str, fused: bool) -> dict[str, Any]:
    dtype = DTYPES[dname]
    batch, seq = (4, 32) if ctx.dry else (4, 1024)
    t_start = time.time()
    dense = llama(ctx, dtype)
    if fused:
        for layer in dense.model.layers:
            layer.mlp = FusedGateUpMLP(layer.mlp)
    n_params = sum(p.numel() for p in dense.parameters())
    pruned = copy.deepcopy(dense)
    n_pruned = prune_decoder(pruned)
    sparse = copy.deepcopy(pruned)
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    vocab = dense.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=gen, device=ctx.device)
    t0 = time.time()
    opts = SparseFormsConfig(mode="graph", token_counts=(batch,), include=("model.layers.*",), blocks=5 if not ctx.dry else 2,
                             min_block_s=0.01 if not ctx.dry else 0.0, alg_cache=str(ctx.out / "alg_cache.json"), semi_kernel=ctx.kernel,
                             target="cuda")
    rep = apply_sparse_forms(sparse, (ids,), opts, example_kwargs={"use_cache": False})
    preflight_s = time.time() - t0
    log(f"e2e {dname} fused={fused}: pre-flight {preflight_s:.1f} s, {len(rep.converted)} of {len(rep.layers)} layers converted")
    decisions: dict[str, Any] = {}
    for lf in rep.layers:
        for s in lf.shapes:
            key = f"{lf.shape[0]}x{lf.shape[1]} @ {s['tokens']} tokens"
            d = decisions.setdefault(key, {"layers": 0, "sparse": 0, "ratio": s["ratio"], "dense_ms": s["dense_ms"], "sparse_ms": s["sparse_ms"], "alg_id": s["alg_id"]})
            d["layers"] += 1
            d["sparse"] += s["chosen"] != "dense"
    not_converted = [{"name": lf.name, "reason": lf.reason} for lf in rep.layers if not lf.shapes]
    with torch.no_grad():
        ref = pruned(input_ids=ids, use_cache=False).logits[:, -64:]
        eager_out = sparse(input_ids=ids, use_cache=False).logits[:, -64:]
    parity_eager = compare_outputs(ref, eager_out)
    rd = CudaGraphRunner(logits_fn(dense), clone_outputs=False, name="dense llama")
    rs = CudaGraphRunner(logits_fn(sparse), clone_outputs=False, name="2:4 llama")
    with torch.no_grad():
        graph_out = rs(ids)[:, -64:].clone()
        parity_graph = compare_outputs(ref, graph_out)
        t = time_alternating({"dense": functools.partial(rd, ids), "2:4": functools.partial(rs, ids)}, warmup=3, blocks=ctx.blocks + 2,
                             min_block_s=0.0 if ctx.dry else 0.1, sync=not ctx.dry)
        ids1 = ids[:, :1].contiguous()
        td = time_alternating({"dense": functools.partial(rd, ids1), "2:4": functools.partial(rs, ids1)}, warmup=3, blocks=ctx.blocks + 2,
                              min_block_s=0.0 if ctx.dry else 0.05, sync=not ctx.dry)
    decode_routes = {"sparse": 0, "dense": 0}
    for m in sparse.modules():
        if isinstance(m, SemiSparseLinear):
            decode_routes[m.route(batch).form] += 1
    out = {
        "dtype": dname, "fused_gate_up": fused, "params": n_params, "pruned_linears": n_pruned, "prefill": [batch, seq],
        "mode": "CUDA-graph replay of the whole model (both), logits not cloned", "preflight_s": preflight_s,
        "converted": len(rep.converted), "linears": len(rep.layers), "decisions": decisions, "not_converted": not_converted[:5],
        "parity_eager": parity_eager.summary(), "parity_eager_ok": parity_eager.ok, "parity_graph": parity_graph.summary(), "parity_graph_ok": parity_graph.ok,
        "prefill_ms": {k: v.to_dict() for k, v in t.items()}, "prefill_ratio": speedup(t["dense"], t["2:4"]),
        "decode_ms": {k: v.to_dict() for k, v in td.items()}, "decode_ratio": speedup(td["dense"], td["2:4"]),
        "decode_routes_at_batch_tokens": decode_routes, "notes": rep.notes, "wall_s": time.time() - t_start,
    }
    if not ctx.dry:
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    log(f"e2e {dname} fused={fused}: prefill dense {t['dense'].median_ms:.2f} ms, 2:4 {t['2:4'].median_ms:.2f} ms -> {out['prefill_ratio']:.3f}x; "
        f"decode {out['decode_ratio']:.3f}x (routes at {batch} tokens: {decode_routes}); parity eager {parity_eager.ok} graph {parity_graph.ok}")
    del dense, pruned, sparse, rd, rs
    return out


def e2e_compiled_variant(ctx: Ctx, dname: str) -> dict[str, Any]:
    """The ~1B decoder through torch.compile on both sides: inductor mode="reduce-overhead" (dense) vs
    the graphprune backend (accelerate only: the decoder weights are already 2:4, lm_head dense; CUDA
    graphs automatic). Prefill only: a decode shape would recompile both with dynamic shapes."""
    from graphprune.backend import graphprune_backend, register

    register()
    dtype = DTYPES[dname]
    batch, seq = (2, 16) if ctx.dry else (4, 1024)
    t_start = time.time()
    dense = llama(ctx, dtype)
    pruned = copy.deepcopy(dense)
    prune_decoder(pruned)
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    ids = torch.randint(0, dense.config.vocab_size, (batch, seq), generator=gen, device=ctx.device)
    with torch.no_grad():
        ref = pruned(input_ids=ids, use_cache=False).logits[:, -64:]
    sync = torch.cuda.synchronize if not ctx.dry else (lambda: None)

    def call(c: Callable[..., Any]) -> Any:
        if not ctx.dry:
            torch.compiler.cudagraph_mark_step_begin()
        return c(input_ids=ids, use_cache=False).logits

    torch._dynamo.reset()
    graphprune_backend.reports.clear()
    compiled = {"dense": torch.compile(dense, **({"mode": "reduce-overhead"} if not ctx.dry else {})),
                "2:4": torch.compile(pruned, backend="graphprune", options={"alg_cache": str(ctx.out / "alg_cache.json")})}
    compile_s: dict[str, float] = {}
    outs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for k, c in compiled.items():
            sync()
            t0 = time.perf_counter()
            call(c)
            sync()
            compile_s[k] = time.perf_counter() - t0
            for _ in range(2):
                o = call(c)
            outs[k] = o[:, -64:].clone()
            log(f"e2e compiled {dname} {k}: first call (compile) {compile_s[k]:.1f} s")
        parity = compare_outputs(ref, outs["2:4"])
        t = time_alternating({k: functools.partial(call, c) for k, c in compiled.items()}, warmup=3, blocks=ctx.blocks + 2,
                             min_block_s=0.0 if ctx.dry else 0.1, sync=not ctx.dry)
    reps = list(graphprune_backend.reports)
    forms = [f for r in reps for f in r.forms]
    out = {
        "dtype": dname, "kind": "torch.compile both sides", "prefill": [batch, seq],
        "mode": "dense: inductor mode=reduce-overhead; 2:4: graphprune backend (inductor + CUDA graphs); lm_head dense on both",
        "compile_s": compile_s, "compile_ratio": compile_s["2:4"] / compile_s["dense"],
        "graphs": len(reps), "compiler": sorted({r.compiler for r in reps}),
        "converted": sum(1 for f in forms if f.get("chosen") != "dense"), "linears": len(forms),
        "parity_graph": parity.summary(), "parity_graph_ok": parity.ok,
        "prefill_ms": {k: v.to_dict() for k, v in t.items()}, "prefill_ratio": speedup(t["dense"], t["2:4"]),
        "wall_s": time.time() - t_start,
    }
    log(f"e2e compiled {dname}: dense {t['dense'].median_ms:.2f} ms, 2:4 {t['2:4'].median_ms:.2f} ms -> {out['prefill_ratio']:.3f}x; "
        f"{out['converted']}/{out['linears']} linears 2:4; parity {parity.ok}")
    del compiled, dense, pruned
    torch._dynamo.reset()
    return out


def step_e2e(ctx: Ctx) -> None:
    variants = [v.strip().split("-", 1) for v in ctx.args.e2e_variants.split(",") if v.strip()]
    results: list[dict[str, Any]] = []
    budget = ctx.args.e2e_budget_s
    for dname, kind in variants:
        fused = kind == "fused"
        if time.time() - T0 > budget and results:
            log(f"e2e: skipping {dname}-{kind} (budget {budget} s spent)")
            results.append({"dtype": dname, "kind": kind, "skipped": f"budget {budget} s"})
            continue
        try:
            if kind == "compiled":
                results.append(e2e_compiled_variant(ctx, dname))
            else:
                results.append(e2e_variant(ctx, dname, fused))
        except Exception as e:
            traceback.print_exc()
            results.append({"dtype": dname, "kind": kind, "error": f"{type(e).__name__}: {str(e)[:500]}"})
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        ctx.save(f"e2e_{ctx.args.e2e_variants.replace(',', '_')}", {"variants": results})
    print(f"\n{'variant':<16} {'dense ms':>9} {'2:4 ms':>8} {'prefill x':>9} {'decode x':>9} {'converted':>10} parity")
    for (dname, kind), r in zip(variants, results):
        label = f"{dname}-{kind}"
        if "prefill_ratio" in r:
            decode = f"{r['decode_ratio']:>9.3f}" if "decode_ratio" in r else f"{'-':>9}"
            print(f"{label:<16} {r['prefill_ms']['dense']['median_ms']:>9.2f} {r['prefill_ms']['2:4']['median_ms']:>8.2f} "
                  f"{r['prefill_ratio']:>9.3f} {decode} {r['converted']:>4}/{r['linears']:<5} {r['parity_graph_ok']}")
        else:
            print(f"{label:<16} {r.get('error') or r.get('skipped')}")


# ---- step: torch.compile ----------------------------------------------------------------------------------------
def step_compile(ctx: Ctx) -> None:
    import torch._inductor.config as inductor_config

    from graphprune.backend import graphprune_backend, register

    register()
    inductor_config.force_disable_caches = True  # each compile pays in full; no FX-graph cache hits between them
    dtype = torch.bfloat16
    batch, seq = (2, 16) if ctx.dry else (4, 1024)
    model = llama(ctx, dtype, layers=2 if ctx.dry else 4)
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen, device=ctx.device)
    reference = copy.deepcopy(model)
    prune_decoder(reference, head=True)  # the backend prunes every GEMM weight it finds, lm_head included
    results: dict[str, Any] = {"model": f"Llama-shaped, {len(model.model.layers)} layers, hidden {model.config.hidden_size}",
                               "input": [batch, seq], "dtype": "bf16",
                               "order": "a tiny warm-up compile, then inductor, then graphprune",
                               "caches": "torch._inductor.config.force_disable_caches = True"}
    sync = torch.cuda.synchronize if not ctx.dry else (lambda: None)

    def call(c: Callable[..., Any]) -> Any:
        if not ctx.dry:
            torch.compiler.cudagraph_mark_step_begin()
        return c(input_ids=ids, use_cache=False)

    def first_calls(compiled: Callable[..., Any]) -> tuple[float, float, torch.Tensor]:
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            call(compiled)
        sync()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(2):  # cudagraph trees: warm-up run, then recording
                out = call(compiled).logits
        sync()
        return first, time.perf_counter() - t0, out[:, -64:].clone()

    t0 = time.perf_counter()  # warm the process (Triton, compile workers) so that neither compile below pays it
    warm = torch.compile(lambda a: torch.nn.functional.silu(a) * 2 + 1)
    warm(torch.randn(64, 64, device=ctx.device, dtype=dtype))
    results["process_warmup_s"] = time.perf_counter() - t0
    torch._dynamo.reset()
    compiled_fns: dict[str, Callable[..., Any]] = {}
    for label, kwargs in (("inductor", {"mode": "reduce-overhead"} if not ctx.dry else {}),
                          ("graphprune", {"backend": "graphprune", "options": {"pattern": "2:4", "alg_cache": str(ctx.out / "alg_cache.json")}})):
        graphprune_backend.reports.clear()
        c = torch.compile(model if label == "inductor" else copy.deepcopy(model), **kwargs)
        first, record, out = first_calls(c)
        results[label] = {"compile_s": first, "warmup_record_s": record}
        if label == "graphprune":
            reps = list(graphprune_backend.reports)
            forms = [f for r in reps for f in r.forms]
            results[label].update({
                "graphs": len(reps), "compiler": sorted({r.compiler for r in reps}),
                "converted": sum(1 for f in forms if f.get("chosen") != "dense"), "linears": len(forms),
                "pruned": sum(len(r.pruned) for r in reps), "notes": [n for r in reps for n in r.notes][:10],
                "forms": [{k: f.get(k) for k in ("name", "chosen", "ratio", "reason")} for f in forms],
            })
            with torch.no_grad():
                ref = reference(input_ids=ids, use_cache=False).logits[:, -64:]
            parity = compare_outputs(ref, out)
            results[label]["parity"] = parity.summary()
            results[label]["parity_ok"] = parity.ok
        log(f"compile {label}: first call {first:.1f} s, warm-up+record {record:.1f} s")
        compiled_fns[label] = c
    with torch.no_grad():
        t = time_alternating({k: functools.partial(call, c) for k, c in compiled_fns.items()}, warmup=3, blocks=ctx.blocks + 2,
                             min_block_s=0.0 if ctx.dry else 0.1, sync=not ctx.dry)
    results["speed_ms"] = {k: v.to_dict() for k, v in t.items()}
    results["speed_ratio"] = speedup(t["inductor"], t["graphprune"])
    results["compile_ratio"] = results["graphprune"]["compile_s"] / results["inductor"]["compile_s"]
    log(f"compile: speed inductor {t['inductor'].median_ms:.2f} ms vs graphprune {t['graphprune'].median_ms:.2f} ms ({results['speed_ratio']:.3f}x); "
        f"compile time graphprune/inductor {results['compile_ratio']:.2f}; "
        f"{results['graphprune']['converted']}/{results['graphprune']['linears']} linears 2:4, parity {results['graphprune']['parity_ok']}")
    ctx.save("compile", results)


STEPS: dict[str, Callable[[Ctx], None]] = {"layers": step_layers, "e2e": step_e2e, "compile": step_compile}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for <step>.json (created)")
    ap.add_argument("--steps", default="env,layers,e2e,compile", help="comma list of env, layers, e2e, compile")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, reference kernel, stand-in capturer")
    ap.add_argument("--blocks", type=int, default=7, help="alternating timed blocks (default 7)")
    ap.add_argument("--dtypes", default="fp16,bf16", help="dtypes of the per-layer step (default fp16,bf16)")
    ap.add_argument("--e2e-variants", default="bf16-unfused,bf16-fused,bf16-compiled,fp16-unfused",
                    help="end-to-end variants DTYPE-KIND in order; KIND: unfused, fused (gate/up), compiled (torch.compile both sides)")
    ap.add_argument("--e2e-budget-s", type=float, default=1e9, help="start no further end-to-end variant after this many seconds")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_semi.py needs a CUDA GPU (or --dry-run)", file=sys.stderr)
        return 2
    ctx = Ctx(args)
    log(f"environment: {json.dumps(ctx.env)}")
    ctx.save("env", {})
    steps = [s.strip() for s in args.steps.split(",") if s.strip() and s.strip() != "env"]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        print(f"unknown steps {unknown}; known: env, {', '.join(STEPS)}", file=sys.stderr)
        return 2
    failed = 0
    for name in steps:
        log(f"== {name}")
        try:
            if ctx.dry:
                with use_capturer(StandInCapturer()):
                    STEPS[name](ctx)
            else:
                STEPS[name](ctx)
        except Exception:
            traceback.print_exc()
            failed += 1
    log(f"done ({failed} step(s) failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
