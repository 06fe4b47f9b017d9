"""Schedules: the cubic formula (computed independently), iterative, one-shot, validation."""

from __future__ import annotations

import pytest

from graphprune.errors import ConfigError
from graphprune.training.schedules import Cubic, Iterative, OneShot, schedule_from_dict


def zhu_gupta(t: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """Reference: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 on the update grid, held between updates."""
    if t < t0:
        return 0.0
    updates = [t0 + j * dt for j in range(n + 1)]
    last = max(u for u in updates if u <= t) if t <= t0 + n * dt else t0 + n * dt
    return s_f + (s_i - s_f) * (1 - (last - t0) / (n * dt)) ** 3


@pytest.mark.parametrize(
    ("s_i", "s_f", "t0", "n", "dt"), [(0.0, 0.9, 10, 10, 5), (0.2, 0.8, 0, 7, 3), (0.5, 0.5, 4, 2, 1)]
)
def test_cubic_matches_formula(s_i: float, s_f: float, t0: int, n: int, dt: int) -> None:
    sched = Cubic(initial=s_i, final=s_f, start_step=t0, end_step=t0 + n * dt, frequency=dt)
    for t in range(t0 + n * dt + 20):
        assert sched.sparsity_at(t) == pytest.approx(zhu_gupta(t, s_i, s_f, t0, n, dt), abs=1e-12), t
    assert sched.sparsity_at(t0 - 1 if t0 else 0) == pytest.approx(0.0 if t0 else s_i)  # warm-up dense
    assert sched.sparsity_at(10**6) == s_f  # cool-down
    updates = [t for t in range(t0 + n * dt + 5) if sched.is_update_step(t)]
    assert all((t - t0) % dt == 0 for t in updates)
    assert schedule_from_dict(sched.to_dict()) == sched


def test_cubic_is_monotone_and_front_loaded() -> None:
    s = Cubic(final=0.9, start_step=0, end_step=100)
    vals = [s.sparsity_at(t) for t in range(101)]
    assert vals == sorted(vals)
    assert vals[50] > 0.9 * 0.8  # cubic: most pruning happens early


def test_for_training() -> None:
    s = Cubic.for_training(total_steps=1000, final=0.9, warmup_fraction=0.1, cooldown_fraction=0.2, frequency=10)
    assert (s.start_step, s.end_step) == (100, 800)
    assert s.sparsity_at(99) == 0.0 and s.sparsity_at(800) == 0.9


def test_iterative_and_one_shot() -> None:
    it = Iterative(sparsities=tuple(i / 10 for i in range(1, 10)), every=100, start_step=50)
    assert (
        it.sparsity_at(49) == 0.0
        and it.sparsity_at(50) == 0.1
        and it.sparsity_at(849) == 0.8
        and it.sparsity_at(850) == 0.9
    )
    assert Iterative(sparsities=(0.5, 0.7), steps=(3, 9)).sparsity_at(8) == 0.5
    one = OneShot(sparsity=0.6, step=5)
    assert [one.sparsity_at(t) for t in (4, 5, 99)] == [0.0, 0.6, 0.6]
    assert one.is_update_step(5) and not one.is_update_step(6)
    assert schedule_from_dict(it.to_dict()) == it
    assert schedule_from_dict(one.to_dict()) == one


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Cubic(initial=0.5, final=0.3, end_step=10), r"final \(0.3\) must be >= Cubic.initial \(0.5\)"),
        (lambda: Cubic(final=1.0, end_step=10), r"Cubic.final must be a sparsity in \[0, 1\)"),
        (lambda: Cubic(final=-0.1, end_step=10), r"Cubic.final must be a sparsity in \[0, 1\)"),
        (lambda: Cubic(final=0.5, start_step=10, end_step=10), "end_step"),
        (lambda: Cubic(final=0.5, end_step=10, frequency=3), "multiple of frequency"),
        (lambda: Iterative(sparsities=(0.5, 0.3), every=1), "must not decrease"),
        (lambda: Iterative(sparsities=(0.5, 1.2), every=1), r"sparsities\[1\] must be a sparsity in \[0, 1\)"),
        (lambda: Iterative(sparsities=(0.5,), steps=(1,), every=2), "exactly one of"),
        (lambda: OneShot(sparsity=1.5), r"OneShot.sparsity must be a sparsity in \[0, 1\)"),
    ],
)
def test_bad_schedules(build, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        build()
