"""Sparsity schedules: the target sparsity at each training step.

Every schedule is a frozen, keyword-only dataclass with ``sparsity_at(step) -> float`` and
``is_update_step(step) -> bool`` (the sparsity changes at ``step``), usable from any training loop:

- :class:`OneShot` — 0 before ``step``, ``sparsity`` from then on.
- :class:`Iterative` — a list of levels (e.g. 10%, 20%, ..., 90%) reached at given steps (or every
  ``every`` steps from ``start_step``).
- :class:`Cubic` — automated gradual pruning (Zhu & Gupta 2017). Warm-up: dense before ``start_step``
  (= t0). Pruning every ``frequency`` (= Δt) steps for n = (end_step − t0)/Δt updates::

      s_t = s_f + (s_i − s_f) · (1 − (t − t0)/(n·Δt))³     for t ∈ {t0, t0+Δt, ..., t0+n·Δt}

  held constant between updates; cool-down: ``s_f`` after ``end_step`` while training continues.

Invalid values raise :class:`~graphprune.errors.ConfigError` naming the field: sparsities outside
[0, 1), a final sparsity below the initial one, decreasing levels, steps out of order.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Union

from graphprune.errors import ConfigError

__all__ = ["Cubic", "Iterative", "OneShot", "Schedule", "schedule_from_dict"]


def _check_sparsity(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value < 1:
        raise ConfigError(f"{owner}.{name} must be a sparsity in [0, 1) (the fraction of zeros), got {value!r}")


def _check_step(owner: str, name: str, value: Any, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}.{name} must be an int >= {minimum}, got {value!r}")


class _Base:
    def sparsity_at(self, step: int) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def is_update_step(self, step: int) -> bool:
        """True where the target sparsity changes at ``step`` (always True at step 0 if nonzero)."""
        prev = self.sparsity_at(step - 1) if step > 0 else 0.0
        return self.sparsity_at(step) != prev

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        d["type"] = type(self).__name__
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class OneShot(_Base):
    """Prune once, to ``sparsity``, at ``step``."""

    sparsity: float
    step: int = 0

    def __post_init__(self) -> None:
        _check_sparsity("OneShot", "sparsity", self.sparsity)
        _check_step("OneShot", "step", self.step)

    def sparsity_at(self, step: int) -> float:
        return float(self.sparsity) if step >= self.step else 0.0

    @property
    def final(self) -> float:
        return float(self.sparsity)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Iterative(_Base):
    """Reach ``sparsities[i]`` at ``steps[i]`` (or at ``start_step + i·every``); 0 before the first."""

    sparsities: tuple[float, ...]
    steps: tuple[int, ...] | None = None
    every: int | None = None
    start_step: int = 0

    def __post_init__(self) -> None:
        levels = tuple(self.sparsities)
        object.__setattr__(self, "sparsities", levels)
        if not levels:
            raise ConfigError("Iterative.sparsities must list at least one level, e.g. (0.1, 0.2, ..., 0.9)")
        for i, s in enumerate(levels):
            _check_sparsity("Iterative", f"sparsities[{i}]", s)
        for i in range(1, len(levels)):
            if levels[i] < levels[i - 1]:
                raise ConfigError(
                    f"Iterative.sparsities must not decrease: level {i} is {levels[i]} after {levels[i - 1]}"
                )
        if (self.steps is None) == (self.every is None):
            raise ConfigError("Iterative needs exactly one of steps=(...) or every=N")
        _check_step("Iterative", "start_step", self.start_step)
        if self.every is not None:
            _check_step("Iterative", "every", self.every, minimum=1)
            steps = tuple(self.start_step + i * self.every for i in range(len(levels)))
        else:
            steps = tuple(self.steps)  # type: ignore[arg-type]
            if len(steps) != len(levels):
                raise ConfigError(f"Iterative.steps has {len(steps)} entries but sparsities has {len(levels)}")
            for i, t in enumerate(steps):
                _check_step("Iterative", f"steps[{i}]", t)
            if any(b <= a for a, b in itertools.pairwise(steps)):
                raise ConfigError(f"Iterative.steps must be strictly increasing, got {list(steps)}")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "every", None)

    def sparsity_at(self, step: int) -> float:
        out = 0.0
        assert self.steps is not None
        for t, s in zip(self.steps, self.sparsities):
            if step >= t:
                out = float(s)
        return out

    @property
    def final(self) -> float:
        return float(self.sparsities[-1])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cubic(_Base):
    """Zhu & Gupta's automated gradual pruning; see the module docstring."""

    final: float
    initial: float = 0.0
    start_step: int = 0
    end_step: int
    frequency: int = 1

    def __post_init__(self) -> None:
        _check_sparsity("Cubic", "initial", self.initial)
        _check_sparsity("Cubic", "final", self.final)
        if self.final < self.initial:
            raise ConfigError(
                f"Cubic.final ({self.final}) must be >= Cubic.initial ({self.initial}): sparsity only grows"
            )
        _check_step("Cubic", "start_step", self.start_step)
        _check_step("Cubic", "frequency", self.frequency, minimum=1)
        _check_step("Cubic", "end_step", self.end_step)
        if self.end_step <= self.start_step:
            raise ConfigError(f"Cubic.end_step ({self.end_step}) must be after start_step ({self.start_step})")
        if (self.end_step - self.start_step) % self.frequency:
            raise ConfigError(
                f"Cubic: end_step - start_step ({self.end_step - self.start_step}) must be a multiple of "
                f"frequency ({self.frequency})"
            )

    @classmethod
    def for_training(
        cls,
        *,
        total_steps: int,
        final: float,
        initial: float = 0.0,
        warmup_fraction: float = 0.1,
        cooldown_fraction: float = 0.3,
        frequency: int = 1,
    ) -> Cubic:
        """A schedule over ``total_steps``: dense warm-up, cubic ramp, then ``final`` for the cool-down."""
        for name, v in (("warmup_fraction", warmup_fraction), ("cooldown_fraction", cooldown_fraction)):
            if not 0 <= v < 1:
                raise ConfigError(f"Cubic.for_training {name} must be in [0, 1), got {v!r}")
        if warmup_fraction + cooldown_fraction >= 1:
            raise ConfigError("Cubic.for_training: warmup_fraction + cooldown_fraction must be < 1")
        _check_step("Cubic.for_training", "total_steps", total_steps, minimum=2)
        start = int(total_steps * warmup_fraction)
        ramp = max(frequency, int(total_steps * (1 - warmup_fraction - cooldown_fraction)) // frequency * frequency)
        return cls(final=final, initial=initial, start_step=start, end_step=start + ramp, frequency=frequency)

    @property
    def n_updates(self) -> int:
        return (self.end_step - self.start_step) // self.frequency

    def sparsity_at(self, step: int) -> float:
        t0, dt = self.start_step, self.frequency
        if step < t0:
            return 0.0
        if step >= self.end_step:
            return float(self.final)
        tq = t0 + ((step - t0) // dt) * dt
        frac = (tq - t0) / (self.n_updates * dt)
        return float(self.final + (self.initial - self.final) * (1.0 - frac) ** 3)


Schedule = Union[OneShot, Iterative, Cubic]
_TYPES: dict[str, type] = {"OneShot": OneShot, "Iterative": Iterative, "Cubic": Cubic}


def schedule_from_dict(d: dict[str, Any]) -> Schedule:
    """Inverse of ``schedule.to_dict()``."""
    if not isinstance(d, dict) or d.get("type") not in _TYPES:
        raise ConfigError(f"a schedule must be an object with 'type' in {sorted(_TYPES)}, got {d!r}")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k != "type"}
    try:
        return _TYPES[d["type"]](**kw)
    except TypeError as e:
        raise ConfigError(f"bad fields for schedule {d['type']}: {e}") from e
