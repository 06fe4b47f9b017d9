"""Quality of structured pruning on the real all-MiniLM-L6-v2: heads and FFN neurons removed, then
(optionally) a short distillation to recover.

Metric (as ``minilm.py``): mean cosine similarity between the pruned and the dense model's sentence
embeddings (attention-masked mean pooling) on the 200 held-out ``eval`` sentences of
``models.text``. Calibration (Taylor importance) and distillation text come from the disjoint
``calib`` split.

One-shot variants: ``heads:0.25``, ``ffn:0.25``, ``ffn:0.5``, ``heads:0.5,ffn:0.5``, each with L1
magnitude and first-order Taylor importance (|grad x w| summed over 16 calibration batches of the
library's proxy loss). FLOP ratio: torch ``FlopCounterMode`` at batch 8 x 128 tokens.

Recovery: the ``--recover`` variant is trained to match the dense teacher (per-token cosine of every
hidden state + cosine of the pooled embedding; the shapes match because the residual stream is not
pruned) on calib-split sentences for at most ``--distill-minutes`` of wall time (AdamW, only the
encoder trains).

    python benchmarks/quality/minilm_structured.py [--json out.json] [--distill-minutes 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for models/ and graphprune
sys.path.insert(0, str(HERE))  # minilm.py, for the shared loading and metric helpers

import minilm as base  # noqa: E402

from graphprune.config import FFN, Heads, parse_pattern  # noqa: E402
from graphprune.structured import prune_structured  # noqa: E402
from graphprune.training.distill import hidden_cosine_loss, mean_pool  # noqa: E402
from graphprune.training.loop import train  # noqa: E402

VARIANTS = ["heads:0.25", "ffn:0.25", "ffn:0.5", "heads:0.5,ffn:0.5"]


def with_importance(text: str, importance: str) -> list[Any]:
    out = []
    for p in parse_pattern(text):
        if isinstance(p, Heads):
            out.append(Heads(ratio=p.ratio, importance=importance))  # type: ignore[arg-type]
        elif isinstance(p, FFN):
            out.append(FFN(ratio=p.ratio, importance=importance))  # type: ignore[arg-type]
    return out


def flops(model: nn.Module, tok: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    enc = tok(["x"] * 8, padding="max_length", max_length=128, return_tensors="pt")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return int(counter.get_total_flops())


def recover(dense: nn.Module, student: nn.Module, tok: Any, sents: list[str], minutes: float, batch: int, lr: float) -> dict[str, Any]:
    teacher = dense.eval()
    student = copy.deepcopy(student).train()
    for name, p in student.named_parameters():
        p.requires_grad_(name.startswith("encoder."))
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = random.Random(0)

    def batches():
        while True:
            order = sorted(range(len(sents)), key=lambda i: (len(sents[i]), rng.random()))
            chunks = [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]
            rng.shuffle(chunks)
            yield from chunks

    def loss_fn(model: nn.Module, idx: list[int]) -> torch.Tensor:
        enc = tok([sents[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
        am = enc["attention_mask"]
        with torch.no_grad():
            t = teacher(**enc, output_hidden_states=True)
        s = model(**enc, output_hidden_states=True)
        layers = len(s.hidden_states) - 1
        hid = sum(hidden_cosine_loss(s.hidden_states[k + 1], t.hidden_states[k + 1], am) for k in range(layers)) / layers
        pooled = 1 - F.cosine_similarity(mean_pool(s.last_hidden_state, am), mean_pool(t.last_hidden_state, am), dim=-1).mean()
        return hid + pooled  # type: ignore[return-value]

    gen = batches()
    result = train(student, (next(gen) for _ in range(1_000_000)), opt, loss_fn, epochs=1, time_limit_s=minutes * 60, log_every=50)
    return {"model": student.eval(), "steps": result.steps, "seconds": round(result.seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--distill-minutes", type=float, default=5.0)
    ap.add_argument("--recover", default="heads:0.5,ffn:0.5", help="the variant to distill (taylor importance); '' for none")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    tok, dense = base.load()
    eval_sents = base.texts("eval", 200)
    calib_sents = base.texts("calib", None)
    eval_emb = base.embed(dense, tok, eval_sents)
    calib = [(b["input_ids"], b["attention_mask"]) for b in base.calib_batches(tok, calib_sents[:256])][:16]
    example = calib[0]
    dense_flops = flops(dense, tok)
    dense_params = sum(p.numel() for p in dense.parameters())
    rows: list[dict[str, Any]] = []
    pruned: dict[tuple[str, str], nn.Module] = {}
    for text in VARIANTS:
        for importance in ("l1", "taylor"):
            m = copy.deepcopy(dense)
            t0 = time.perf_counter()
            res = prune_structured(m, example, with_importance(text, importance), calibration=calib)
            seconds = time.perf_counter() - t0
            m.eval()
            row = {
                "pattern": text,
                "importance": importance,
                "mean_cosine": base.mean_cos(base.embed(m, tok, eval_sents), eval_emb),
                "params_ratio": sum(p.numel() for p in m.parameters()) / dense_params,
                "flop_ratio": flops(m, tok) / dense_flops,
                "prune_seconds": round(seconds, 1),
                "parity_ok": bool(res.parity.get("ok")),
            }
            rows.append(row)
            pruned[(text, importance)] = m
            print(f"{text:20s} {importance:7s} cos {row['mean_cosine']:.4f}  params {row['params_ratio']:.3f}  "
                  f"FLOPs {row['flop_ratio']:.3f}  ({seconds:.1f}s)", flush=True)
    out: dict[str, Any] = {"one_shot": rows}
    if args.recover:
        train_sents = calib_sents
        rec = recover(dense, pruned[(args.recover, "taylor")], tok, train_sents, args.distill_minutes, args.batch, args.lr)
        cos = base.mean_cos(base.embed(rec["model"], tok, eval_sents), eval_emb)
        out["recovery"] = {
            "pattern": args.recover, "importance": "taylor", "steps": rec["steps"], "seconds": rec["seconds"],
            "train_sentences": len(train_sents), "batch": args.batch, "lr": args.lr, "mean_cosine": cos,
        }
        print(f"recovered {args.recover}: cos {cos:.4f} after {rec['steps']} steps in {rec['seconds']}s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
