"""Quality benchmark (a): a small CNN on scikit-learn's digits (real 8×8 handwritten digits).

Variants, each from the same dense model per seed, test accuracy on a fixed held-out split:

  dense              trained dense (Adam, --epochs)
  dense + retrain    control: the dense model trained --retrain-epochs more, like the ASP retrain
  2:4 one-shot       magnitude 2:4 (ASP m4n2_1d) on every layer whose K is divisible by 4, no retraining
  2:4 + ASP retrain  the same masks, then --retrain-epochs with the optimizer keeping pruned weights at 0
  90% cubic gradual  global magnitude pruning to 90% following Zhu & Gupta's cubic schedule while retraining
  movement 90%       hard movement pruning (learned scores, straight-through), cubic schedule to 90%

Targets (issue 5): 2:4 + retrain within 0.5 points of dense; 90% gradual within 1.5 points.

    python benchmarks/quality/digits.py [--seeds 0 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from graphprune.training.asp import ASP
from graphprune.training.gradual import GradualPruner
from graphprune.training.movement import MovementPruner
from graphprune.training.schedules import Cubic


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)  # K = 1: not 2:4-prunable (left dense, reported)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def data(split_seed: int = 0) -> tuple[torch.Tensor, ...]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    idx_tr, idx_te = train_test_split(range(len(y)), test_size=0.25, random_state=split_seed, stratify=d.target)
    return x[idx_tr], y[idx_tr], x[idx_te], y[idx_te]


def batches(x: torch.Tensor, y: torch.Tensor, bs: int, gen: torch.Generator):
    perm = torch.randperm(len(y), generator=gen)
    for i in range(0, len(y), bs):
        j = perm[i : i + bs]
        yield x[j], y[j]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    acc = float((model(x).argmax(1) == y).float().mean()) * 100
    model.train()
    return acc


def fit(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    seed: int,
    on_step: Callable[[int], None] | None = None,
    extra_loss: Callable[[], torch.Tensor] | None = None,
) -> int:
    gen = torch.Generator().manual_seed(seed)
    step = 0
    model.train()
    for _ in range(epochs):
        for xb, yb in batches(x, y, 64, gen):
            if on_step:
                on_step(step)
            loss = F.cross_entropy(model(xb), yb)
            if extra_loss:
                loss = loss + extra_loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return step


def zeros_fraction(model: nn.Module, names: list[str]) -> float:
    p = dict(model.named_parameters())
    total = sum(p[n].numel() for n in names)
    return sum(int((p[n] == 0).sum()) for n in names) / total


def run_seed(seed: int, epochs: int, retrain_epochs: int, gradual_epochs: int) -> dict[str, float]:
    xtr, ytr, xte, yte = data()
    torch.manual_seed(seed)
    dense = DigitsCNN()
    fit(dense, torch.optim.Adam(dense.parameters(), lr=1e-3), xtr, ytr, epochs, seed)
    out = {"dense": accuracy(dense, xte, yte)}
    steps_per_epoch = -(-len(ytr) // 64)

    def copy() -> DigitsCNN:
        m = DigitsCNN()
        m.load_state_dict(dense.state_dict())
        return m

    # control: the dense model trained for the same extra epochs as the ASP retrain
    m = copy()
    fit(m, torch.optim.Adam(m.parameters(), lr=5e-4), xtr, ytr, retrain_epochs, seed + 1000)
    out["dense + retrain epochs (control)"] = accuracy(m, xte, yte)

    # 2:4 one-shot, then ASP retrain
    m = copy()
    opt = torch.optim.Adam(m.parameters(), lr=5e-4)
    asp = ASP(m, "m4n2_1d")
    asp.init_optimizer_for_pruning(opt)
    asp.compute_sparse_masks()
    out["2:4 one-shot"] = accuracy(m, xte, yte)
    fit(m, opt, xtr, ytr, retrain_epochs, seed + 1000)
    out["2:4 + ASP retrain"] = accuracy(m, xte, yte)
    out["2:4 zeros (pruned layers)"] = zeros_fraction(m, [s.fqn for s in asp.sites if not s.skipped]) * 100

    # 90% cubic gradual (global magnitude)
    total = gradual_epochs * steps_per_epoch
    sched = Cubic.for_training(total_steps=total, final=0.9, warmup_fraction=0.0, cooldown_fraction=0.4, frequency=10)
    m = copy()
    opt = torch.optim.Adam(m.parameters(), lr=5e-4)
    pruner = GradualPruner(m, sched, scope="global", optimizer=opt)
    fit(m, opt, xtr, ytr, gradual_epochs, seed + 2000, on_step=pruner.step)
    out["90% cubic gradual"] = accuracy(m, xte, yte)
    out["90% gradual zeros"] = pruner.sparsity() * 100

    # hard movement pruning, cubic schedule to 90% (per layer)
    m = copy()
    mp = MovementPruner(m, method="hard", sparsity=sched)
    opt = torch.optim.Adam(mp.param_groups(lr=5e-4, score_lr=1e-2))
    fit(m, opt, xtr, ytr, gradual_epochs, seed + 3000, on_step=mp.step)
    mp.remove()
    out["movement 90%"] = accuracy(m, xte, yte)
    out["movement zeros"] = zeros_fraction(m, [s.fqn for s in mp.sites]) * 100
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--retrain-epochs", type=int, default=15)
    ap.add_argument("--gradual-epochs", type=int, default=40)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    per_seed = {s: run_seed(s, args.epochs, args.retrain_epochs, args.gradual_epochs) for s in args.seeds}
    keys = list(per_seed[args.seeds[0]])
    print(
        f"digits CNN, test split 25% (450 images), seeds {args.seeds}, torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    print(f"| variant | {' | '.join(f'seed {s}' for s in args.seeds)} | mean | Δ vs dense |")
    print("|---|" + "---|" * (len(args.seeds) + 2))
    dense_mean = statistics.mean(per_seed[s]["dense"] for s in args.seeds)
    summary = {}
    for k in keys:
        vals = [per_seed[s][k] for s in args.seeds]
        mean = statistics.mean(vals)
        summary[k] = mean
        delta = f"{mean - dense_mean:+.2f}" if "zeros" not in k else ""
        print(f"| {k} | {' | '.join(f'{v:.2f}' for v in vals)} | {mean:.2f} | {delta} |")
    print(f"total {time.time() - t0:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"per_seed": per_seed, "mean": summary, "args": vars(args), "torch": torch.__version__}, f, indent=2
            )


if __name__ == "__main__":
    main()
