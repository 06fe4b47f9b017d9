"""The one include/exclude rule: which layers a pattern applies to.

A :class:`Selector` holds fnmatch globs (``"*.attention.*"``, ``"encoder.layer.1[01].*"``) over the names
of a layer: its module fqn, its parameter fqn, the names of a coupled group's producing modules, an ONNX
initializer's name. A layer is selected when any of its names matches an include glob (or there are no
include globs) and none of its names matches an exclude glob. Every front end (compile, inspect,
structured pruning, ONNX initializer pruning, sparse runtime forms, the training side's module walk)
asks this class, so the rule is written once.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Selector", "matches_any"]


def matches_any(name: str, globs: Iterable[str]) -> bool:
    """True when ``name`` matches one of ``globs`` (case-sensitive fnmatch; a plain name matches itself)."""
    return any(name == g or fnmatch.fnmatchcase(name, g) for g in globs)


@dataclass(frozen=True)
class Selector:
    """Include / exclude globs over layer names (see the module docstring)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field_name in ("include", "exclude"):
            v = getattr(self, field_name)
            object.__setattr__(self, field_name, (v,) if isinstance(v, str) else tuple(v))

    def selects(self, *names: str) -> bool:
        """Whether a layer known by ``names`` (its aliases) is selected."""
        if self.include and not any(matches_any(n, self.include) for n in names):
            return False
        return not any(matches_any(n, self.exclude) for n in names)
