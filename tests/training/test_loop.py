"""Training helpers: the plain loop with gradual / movement callbacks, and the HF Trainer callback."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from graphprune.plan import Plan
from graphprune.sparsity.metrics import check_nm
from graphprune.training.gradual import GradualPruner
from graphprune.training.loop import train
from graphprune.training.movement import MovementPruner
from graphprune.training.schedules import Cubic, Iterative


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def batches(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)) for _ in range(n)]


def mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return (model(x) - y).square().mean()


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gradual_pruning_in_the_loop(scope: str) -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = GradualPruner(model, Cubic(final=0.8, start_step=2, end_step=12, frequency=2), scope=scope, optimizer=opt)  # type: ignore[arg-type]
    seen: list[float] = []

    class Probe:
        def on_step_end(self, step: int) -> None:
            seen.append(pruner.sparsity())

    result = train(model, batches(), opt, mse, steps=16, callbacks=[pruner, Probe()])
    assert result.steps == 16 and len(result.losses) == 16
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(0.8, abs=1 / 128)
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(seen))  # masks only grow
    masks = pruner.asp.masks()
    for fqn, m in masks.items():
        assert torch.count_nonzero(dict(model.named_parameters())[fqn][~m]) == 0
    if scope == "layer":
        assert all(float((~m).float().mean()) == pytest.approx(0.8, abs=1 / 128) for m in masks.values())


def test_iterative_schedule_and_movement_callback() -> None:
    model = make_model()
    pruner = MovementPruner(model, method="hard", sparsity=Iterative(sparsities=(0.25, 0.5), every=3))
    opt = torch.optim.Adam(pruner.param_groups(lr=1e-3, score_lr=1e-2))
    train(model, batches(), opt, mse, steps=8, callbacks=[pruner])
    assert pruner.current == 0.5 and pruner.sparsity() == pytest.approx(0.5, abs=1e-2)


def test_hf_trainer_callback(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from graphprune.training.hf_callback import GraphPruneCallback

    assert issubclass(GraphPruneCallback, transformers.TrainerCallback)
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    cb = GraphPruneCallback(plan_dir=tmp_path / "plan")
    args = SimpleNamespace()
    cb.on_train_begin(args, state, control, model=model, optimizer=opt)
    for step, b in enumerate(batches(5)):  # what Trainer does around each step
        state.global_step = step
        cb.on_step_begin(args, state, control)
        opt.zero_grad()
        mse(model, b).backward()
        opt.step()
    cb.on_train_end(args, state, control)
    plan = Plan.load(tmp_path / "plan")
    assert set(plan.sites) == {"0.weight", "2.weight"}
    assert check_nm(model[0].weight, 2, 4, axis=1).ok

    gradual_model = make_model()
    gopt = torch.optim.SGD(gradual_model.parameters(), lr=0.1)
    gcb = GraphPruneCallback(schedule=Cubic(final=0.5, start_step=0, end_step=4))
    gcb.on_train_begin(args, state, control, model=gradual_model, optimizer=gopt)
    for step in range(6):
        state.global_step = step
        gcb.on_step_begin(args, state, control)
    assert gcb.plan().sparsity() == pytest.approx(0.5, abs=1e-2)


def test_importing_training_does_not_import_transformers() -> None:
    import subprocess
    import sys

    code = "import sys, graphprune.training, graphprune.plan; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_time_limit_is_not_overrun() -> None:
    import time

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def slow(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        time.sleep(0.05)
        return mse(m, b)

    result = train(model, batches(), opt, slow, steps=1000, time_limit_s=0.5)
    assert 1 <= result.steps <= 10
    # the step that would cross the limit is not started (a loaded machine may still stretch one step)
    assert result.seconds <= 0.5 + 0.25
