"""A plain-PyTorch training helper that drives pruning callbacks.

``train(model, batches, optimizer, loss_fn, steps=..., callbacks=[pruner, ...])`` runs the usual
loop — ``loss_fn(model, batch)``, backward, optional gradient clipping, ``optimizer.step()``, optional
LR scheduler — and calls, on every callback that defines them::

    on_train_begin(model, optimizer)   once, before the first step
    on_step_begin(step)                before the forward pass (schedules update masks here)
    on_loss(loss, step) -> loss        may add a penalty (movement soft / L0 regularization)
    on_step_end(step)                  after the optimizer step
    on_train_end()                     once, at the end

:class:`~graphprune.training.gradual.GradualPruner` and
:class:`~graphprune.training.movement.MovementPruner` implement the ones they need. Nothing here is
specific to pruning, so the loop also serves for distillation (``loss_fn`` closes over the teacher).
Progress is logged (``logging``), never printed.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from graphprune.errors import ConfigError

__all__ = ["TrainResult", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)


def _call(cbs: Sequence[Any], name: str, *args: Any) -> None:
    for cb in cbs:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(*args)


def train(
    model: nn.Module,
    batches: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    *,
    steps: int | None = None,
    epochs: int = 1,
    callbacks: Sequence[Any] = (),
    scheduler: Any = None,
    grad_clip: float | None = None,
    time_limit_s: float | None = None,
    log_every: int = 50,
    start_step: int = 0,
) -> TrainResult:
    """Train ``model``; stops after ``steps`` optimizer steps (cycling ``batches``) or after ``epochs``
    passes when ``steps`` is None, or at ``time_limit_s``: a step is not started when the previous
    step's duration says it would end past the limit. Returns the losses."""
    if steps is not None and steps < 0:
        raise ConfigError(f"steps must be >= 0, got {steps!r}")
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs!r}")
    if steps is not None:
        source: Iterable[Any] = itertools.islice(itertools.cycle(batches), steps)
    else:
        source = itertools.chain.from_iterable(batches for _ in range(epochs))
    result = TrainResult()
    model.train()
    _call(callbacks, "on_train_begin", model, optimizer)
    t0 = time.perf_counter()
    step = start_step
    last_step_s = 0.0
    for batch in source:
        started = time.perf_counter()
        # Do not start a step that would end past the time limit (judged by the last step's duration).
        if time_limit_s is not None and started - t0 + last_step_s > time_limit_s:
            log.info("time limit %.0fs: stopping after %d steps", time_limit_s, result.steps)
            break
        _call(callbacks, "on_step_begin", step)
        loss = loss_fn(model, batch)
        for cb in callbacks:
            fn = getattr(cb, "on_loss", None)
            if fn is not None:
                loss = fn(loss, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        _call(callbacks, "on_step_end", step)
        result.losses.append(float(loss.detach()))
        step += 1
        result.steps += 1
        if log_every and result.steps % log_every == 0:
            recent = result.losses[-log_every:]
            log.info("step %d: loss %.4f (%.1fs)", step, sum(recent) / len(recent), time.perf_counter() - t0)
        last_step_s = time.perf_counter() - started
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            log.info("time limit %.0fs reached after %d steps", time_limit_s, result.steps)
            break
    _call(callbacks, "on_train_end")
    result.seconds = time.perf_counter() - t0
    return result
