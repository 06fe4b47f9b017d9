"""onnxruntime CPU latency of structurally pruned models, dense vs shrunk, next to the FLOP ratio.

    python benchmarks/structured_speed.py [--models resnet50,bert_base] [--rounds 6] [--out FILE]

Models (random weights, reference sizes from ``models.zoo``):
- ``resnet50``: transformers ResNetConfig() layout, 224x224, ``Channels(ratio=0.5)``;
- ``bert_base``: BertConfig() defaults, sequence length 128, ``Heads(ratio=0.5) + FFN(ratio=0.5)``;
- ``resnet50_inner`` (optional): ResNet-50 at ``Channels(ratio=0.5)`` with the residual streams left
  dense (``exclude`` globs over the shortcut and stem convs): only the channels inside each bottleneck go.
- ``llama_lm`` (optional): a Llama-style causal LM from ``LlamaConfig`` (hidden 768, 12 layers, 12 query
  heads / 4 KV heads, SwiGLU 2048, vocabulary 32000, LM head tied to the embedding; random weights),
  sequence length 128, ``Hidden(0.25) + Heads(0.25) + FFN(0.25)``: the RMSNorm residual stream shrinks too.

Method (benchmarks/BENCHMARKING.md): each variant is exported to ONNX once with a dynamic batch axis
and timed at batch 1 and batch 8 in onnxruntime's CPUExecutionProvider with
``intra_op_num_threads=2``, ``inter_op_num_threads=1``, ``ORT_ENABLE_ALL``. Only one session is alive
at a time: a block creates the session, runs untimed warm-ups, times ``runs`` calls, and deletes it;
blocks alternate dense, shrunk, dense, shrunk ... for ``rounds`` rounds. Reported: min and median
per-call latency of each, the ratio of medians (shrunk / dense) and the FLOP ratio counted by
``torch.utils.flop_counter.FlopCounterMode`` on the same inputs. The issue's target: the latency
ratio within 1.15x of the FLOP ratio at batch 8.

If ``torch_pruning`` is importable, the same models pruned by it at the same ratios (its
MetaPruner, L1 magnitude, heads for BERT with ``prune_num_heads``) are timed the same way.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from graphprune.bench import cpu_model  # noqa: E402
from graphprune.config import FFN, Channels, Heads, Hidden  # noqa: E402
from graphprune.structured import prune_structured  # noqa: E402

log = logging.getLogger("structured_speed")


# ---- models ----------------------------------------------------------------------------------------
# resnet50_inner: the same ResNet-50 with its residual streams left dense (only the channels inside each
# bottleneck are removed), via exclude globs over the shortcut and stem convolutions
EXCLUDE = {"resnet50_inner": ["*shortcut*", "*embedder*"]}


LLAMA_VOCAB = 32000


def _llama_lm() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=LLAMA_VOCAB, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
        use_cache=False,
    )
    return LlamaForCausalLM(config)


def build(name: str) -> tuple[torch.nn.Module, Any]:
    from models import zoo

    if name == "llama_lm":
        return _llama_lm().eval(), None
    model, _ = zoo.build("resnet50" if name.startswith("resnet50") else name)
    return model.eval(), None


def inputs_for(name: str, batch: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    if name.startswith("resnet50"):
        return (torch.randn(batch, 3, 224, 224, generator=gen),)
    ids = torch.randint(0, LLAMA_VOCAB if name == "llama_lm" else 30522, (batch, 128), generator=gen)
    return ids, torch.ones(batch, 128, dtype=torch.long)


def patterns_for(name: str) -> list[Any]:
    if name.startswith("resnet50"):
        return [Channels(ratio=0.5)]
    if name == "llama_lm":
        return [Hidden(ratio=0.25), Heads(ratio=0.25), FFN(ratio=0.25)]
    return [Heads(ratio=0.5), FFN(ratio=0.5)]


def flops(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return int(counter.get_total_flops())


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- torch_pruning (optional) --------------------------------------------------------------------------
def torch_pruning_version() -> str | None:
    try:
        import torch_pruning as tp
    except ImportError:
        return None
    return str(getattr(tp, "__version__", "?"))


def prune_with_torch_pruning(name: str, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.nn.Module:
    import torch_pruning as tp

    imp = tp.importance.MagnitudeImportance(p=1)
    if name == "resnet50":
        pruner = tp.pruner.MetaPruner(
            model, inputs, importance=imp, pruning_ratio=0.5, ignored_layers=[model.classifier],
            output_transform=lambda out: out.logits.sum(), round_to=8,
        )
        pruner.step()
        return model
    from transformers.models.bert.modeling_bert import BertSelfAttention

    num_heads: dict[torch.nn.Module, int] = {}
    attn_modules = [m for m in model.modules() if isinstance(m, BertSelfAttention)]
    for m in attn_modules:
        for lin in (m.query, m.key, m.value):
            num_heads[lin] = m.num_attention_heads
    # keep the hidden size (residual stream) dense, as graphprune does: prune heads and FFN neurons only
    ignored: list[torch.nn.Module] = [model.embeddings, model.pooler]
    for layer in model.encoder.layer:
        ignored += [layer.attention.output, layer.output]
    pruner = tp.pruner.MetaPruner(
        model, inputs, importance=imp, pruning_ratio=0.5, ignored_layers=ignored, num_heads=num_heads,
        prune_head_dims=False, prune_num_heads=True, head_pruning_ratio=0.5,
        output_transform=lambda out: out.last_hidden_state.sum(),
    )
    pruner.step()
    for m in attn_modules:
        m.num_attention_heads = pruner.num_heads[m.query]
        m.all_head_size = m.query.out_features
    return model


# ---- ONNX + timing --------------------------------------------------------------------------------------
def export(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> Path:
    from graphprune.runtime.export import export_onnx

    export_onnx(model, inputs, path, dynamic=True)
    return path


def _session(path: Path, *, spinning: bool = True) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _feeds(session: Any, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    names = [i.name for i in session.get_inputs()]
    return {n: t.numpy() for n, t in zip(names, inputs)}


def time_alternating(
    paths: dict[str, Path], inputs: tuple[torch.Tensor, ...], *, rounds: int, runs: int, warmup: int = 3, cpu_time: bool = False
) -> dict[str, list[float]]:
    """Per-call seconds of each variant; one live session at a time, variants in alternating blocks.

    ``cpu_time``: measure the process's CPU seconds instead of wall-clock, with onnxruntime's thread
    spinning off (a spinning thread burns CPU while it waits): a figure that other processes on a
    loaded machine disturb far less than wall-clock time (supplementary; the wall-clock ratio is the
    one BENCHMARKING.md asks for).
    """
    clock = time.process_time if cpu_time else time.perf_counter
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for key, path in paths.items():
            sess = _session(path, spinning=not cpu_time)
            feeds = _feeds(sess, inputs)
            for _ in range(warmup):
                sess.run(None, feeds)
            for _ in range(runs):
                t0 = clock()
                sess.run(None, feeds)
                times[key].append(clock() - t0)
            del sess
            gc.collect()
    return times


def _fmt_ms(xs: list[float]) -> str:
    return f"{min(xs) * 1e3:.1f} / {statistics.median(xs) * 1e3:.1f}"


def bench_model(name: str, *, rounds: int, workdir: Path, with_tp: bool, cpu_rounds: int = 0) -> list[dict[str, Any]]:
    dense, _ = build(name)
    variants: dict[str, torch.nn.Module] = {"dense": dense}
    t0 = time.perf_counter()
    shrunk = copy.deepcopy(dense)
    res = prune_structured(shrunk, inputs_for(name, 1), patterns_for(name), exclude=EXCLUDE.get(name, ()))
    log.info("%s: graphprune pruned in %.1fs: %s", name, time.perf_counter() - t0, res.summary())
    variants["graphprune"] = shrunk
    if with_tp and name in ("resnet50", "bert_base"):
        try:
            variants["torch_pruning"] = prune_with_torch_pruning(name, copy.deepcopy(dense), inputs_for(name, 1))
        except Exception as e:  # report, do not hide
            log.warning("%s: torch_pruning failed: %s: %s", name, type(e).__name__, e)
    paths = {}
    for key, model in variants.items():
        t0 = time.perf_counter()
        paths[key] = export(model, inputs_for(name, 1), workdir / f"{name}-{key}.onnx")
        log.info("%s: exported %s in %.1fs", name, key, time.perf_counter() - t0)
    rows = []
    for batch in (1, 8):
        inputs = inputs_for(name, batch)
        fl = {k: flops(m, inputs) for k, m in variants.items()}
        # short blocks, many rounds: dense and pruned sample the same machine load
        runs = 10 if batch == 1 else 3
        if name in ("bert_base", "llama_lm") and batch == 8:
            runs = 2
        times = time_alternating(paths, inputs, rounds=rounds, runs=runs)
        cpu = time_alternating(paths, inputs, rounds=cpu_rounds, runs=runs, cpu_time=True) if cpu_rounds else None
        med_dense = statistics.median(times["dense"])
        for key in variants:
            if key == "dense":
                continue
            lat_ratio = statistics.median(times[key]) / med_dense
            flop_ratio = fl[key] / fl["dense"]
            rows.append(
                {
                    "model": name,
                    "tool": key,
                    "batch": batch,
                    "dense_ms": _fmt_ms(times["dense"]),
                    "pruned_ms": _fmt_ms(times[key]),
                    "latency_ratio": lat_ratio,
                    "flop_ratio": flop_ratio,
                    "lat_over_flop": lat_ratio / flop_ratio,
                    "min_ratio": min(times[key]) / min(times["dense"]),
                    "cpu_ratio": statistics.median(cpu[key]) / statistics.median(cpu["dense"]) if cpu else None,
                    "params_ratio": n_params(variants[key]) / n_params(dense),
                    "n_dense": len(times["dense"]),
                    "n_pruned": len(times[key]),
                }
            )
            log.info("%s b%d %s: latency %.3f  flops %.3f", name, batch, key, lat_ratio, flop_ratio)
    return rows


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | pruned by | batch | dense ms (min / median) | pruned ms (min / median) | latency ratio (medians) "
        "| FLOP ratio | latency / FLOP | ratio of mins | CPU-time ratio | params ratio |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['tool']} | {r['batch']} | {r['dense_ms']} | {r['pruned_ms']} | {r['latency_ratio']:.3f} | "
            f"{r['flop_ratio']:.3f} | {r['lat_over_flop']:.2f} | {r['min_ratio']:.3f} | "
            + (f"{r['cpu_ratio']:.3f}" if r["cpu_ratio"] is not None else "-")
            + f" | {r['params_ratio']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,bert_base")
    ap.add_argument("--rounds", type=int, default=10, help="alternating blocks per variant")
    ap.add_argument("--cpu-rounds", type=int, default=0, help="also time CPU seconds (spinning off) in this many rounds")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown section here")
    ap.add_argument("--no-torch-pruning", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    import onnxruntime

    tp_version = None if args.no_torch_pruning else torch_pruning_version()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += bench_model(
                name.strip(), rounds=args.rounds, workdir=Path(tmp), with_tp=tp_version is not None, cpu_rounds=args.cpu_rounds
            )
    header = [
        "## Structured pruning: onnxruntime CPU latency, dense vs shrunk",
        "",
        f"- command: `python benchmarks/structured_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip(),
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine()}; load average at the end: {os.getloadavg()[0]:.2f}",
        f"- versions: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, python {platform.python_version()}",
        "- onnxruntime CPUExecutionProvider, intra_op_num_threads=2, inter_op_num_threads=1, ORT_ENABLE_ALL; "
        f"one session alive at a time; {args.rounds} alternating blocks per variant (3 warm-up runs, then 10 timed "
        "calls at batch 1, 3 at batch 8, 2 for BERT and llama_lm at batch 8)",
        "- ratios are shrunk / dense (ratio of medians for latency); FLOPs from torch FlopCounterMode on the same inputs",
        "- CPU-time ratio (where given): median process CPU seconds per call, onnxruntime thread spinning off, "
        f"{args.cpu_rounds} more alternating rounds: far less disturbed by other processes than wall-clock time",
        "- torch_pruning: " + (f"version {tp_version} (MetaPruner, L1 magnitude, same ratios)" if tp_version else "not installed, not compared"),
        "",
        table(rows),
        "",
    ]
    text = "\n".join(header)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
