"""The pass contract, the registry and the runner: every stage of ``compile`` goes through here.

A *pass* is ``fn(module, options, ctx) -> PassResult``:

- ``module``: the ``nn.Module`` being compiled (graphprune's own copy: the pipeline copies the user's
  model once, in its first stage; the captured graph is for analysis and lives in ``ctx.capture``);
- ``options``: the pass's own frozen options (bound to the pass in a :class:`Stage`, never a lambda);
- ``ctx``: the :class:`PassContext` the stages of one run share (sites, decisions, masks, report, files).

It returns a frozen :class:`PassResult` ``(module, modified, report)`` whose ``report`` is a typed record
of the pass (a dataclass with ``to_dict()``). Passes are registered with :func:`register_pass` under a
kebab-case name with what they may change (:data:`MUTATIONS`):

``weights``    values of existing parameters/buffers, in place (same tensors, same shapes);
``structure``  parameters, buffers or submodules added, removed, reshaped or re-classed;
``module``     a different module object returned (the copy stage);
(empty)        nothing in the module: the pass reads it and writes ``ctx`` or files.

:func:`run_pass` checks the declaration against what happened (parameter/buffer version counters,
shapes, the module tree; cheap even for billion-parameter models), times the pass, records it in the
report, and writes the module before/after into ``ctx.dump_dir`` when set. A failure becomes a
:class:`~graphprune.errors.PassError` naming the pass and the passes that ran before it (the cause
chained); a user-facing error (a NaN weight, a bad option) keeps its type and message and gets the
stage as ``error.stage`` and as a note.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from graphprune.analysis.sites import Site
from graphprune.capture import Capture
from graphprune.config import CompileConfig, ElementPattern
from graphprune.errors import GraphPruneError, PassError
from graphprune.io.staging import StagedOutput
from graphprune.report import CompileReport, Decision, PassRecord

log = logging.getLogger(__name__)

__all__ = [
    "MUTATIONS",
    "PASSES",
    "PassContext",
    "PassReport",
    "PassResult",
    "PassSpec",
    "Stage",
    "register_pass",
    "run_pass",
    "run_stages",
    "stage",
]

MUTATIONS = frozenset({"weights", "structure", "module"})


class PassReport(Protocol):
    """What a pass reports: a (frozen) dataclass that renders itself as JSON-ready data."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PassResult:
    module: nn.Module
    modified: bool
    report: PassReport


@dataclass
class PassContext:
    """State shared by the stages of one run (the blackboard; the module itself is passed along)."""

    example_inputs: tuple[Any, ...]
    config: CompileConfig = field(default_factory=CompileConfig)
    capture: Capture | None = None
    sites: dict[str, Site] = field(default_factory=dict)
    unsupported: list[tuple[str, str]] = field(default_factory=list)  # (param fqn, why) of ops no rule knows
    decisions: dict[str, Decision] = field(default_factory=dict)
    patterns: dict[str, ElementPattern] = field(default_factory=dict)  # param fqn -> pattern, pruned sites only
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # param fqn -> bool mask (True = keep)
    report: CompileReport = field(default_factory=CompileReport)
    progress: bool = False
    dump_dir: Path | None = None
    output: StagedOutput | None = None  # the run's output folder, staged: write to .file(name), report .final(name)
    original: nn.Module | None = None  # the caller's model: read, never changed (fidelity's reference)
    artifacts: dict[str, Any] = field(default_factory=dict)  # what one stage leaves for a later one (ONNX path, ...)
    ran: list[str] = field(default_factory=list)


PassFn = Callable[[nn.Module, Any, PassContext], PassResult]


@dataclass(frozen=True)
class PassSpec:
    """A registered pass: its name, function, what it may change and the type of its options."""

    name: str
    fn: PassFn
    mutates: frozenset[str]
    options: type | None = None

    @property
    def summary(self) -> str:
        doc = (self.fn.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


PASSES: dict[str, PassSpec] = {}


def register_pass(name: str, *, mutates: Sequence[str] = (), options: type | None = None) -> Callable[[PassFn], PassFn]:
    """Register ``fn`` as pass ``name`` (kebab-case) that may change ``mutates`` (see :data:`MUTATIONS`)."""
    bad = set(mutates) - MUTATIONS
    if bad:
        raise ValueError(f"pass {name!r}: unknown mutation kinds {sorted(bad)}; use {sorted(MUTATIONS)}")
    if name != name.lower() or " " in name or "_" in name:
        raise ValueError(f"pass names are kebab-case, got {name!r}")

    def deco(fn: PassFn) -> PassFn:
        if name in PASSES and PASSES[name].fn is not fn:
            raise ValueError(f"pass {name!r} is registered twice")
        PASSES[name] = PassSpec(name, fn, frozenset(mutates), options)
        return fn

    return deco


@dataclass(frozen=True)
class Stage:
    """A registered pass bound to its options: one step of a pipeline.

    ``label`` is the pipeline's name for the step (``masks``, ``rewrite``: several passes may serve one
    step); the report's timings are per label, its pass records per pass.
    """

    spec: PassSpec
    options: Any = None
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.spec.name


def stage(name: str, options: Any = None, *, label: str = "") -> Stage:
    """The registered pass ``name`` bound to ``options`` (checked against the pass's options type; None:
    its default options), as the pipeline step ``label`` (default: the pass name)."""
    spec = PASSES.get(name)
    if spec is None:
        raise KeyError(f"no pass named {name!r}; registered: {sorted(PASSES)}")
    if spec.options is not None and options is None:
        options = spec.options()  # the pass's default options
    if spec.options is not None and not isinstance(options, spec.options):
        raise TypeError(f"pass {name!r} takes options of type {spec.options.__name__}, got {type(options).__name__}")
    if spec.options is None and options is not None:
        raise TypeError(f"pass {name!r} takes no options, got {options!r}")
    return Stage(spec, options, label)


# ---- the declared-mutation check ------------------------------------------------------------------
@dataclass(frozen=True)
class _Fingerprint:
    versions: Mapping[str, tuple[int, int]]  # tensor fqn -> (id, version counter)
    shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
    modules: tuple[tuple[str, type], ...]


def _fingerprint(module: nn.Module) -> _Fingerprint:
    versions: dict[str, tuple[int, int]] = {}
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    try:
        tensors = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    except TypeError:  # TorchScript modules take no remove_duplicate
        tensors = [*module.named_parameters(), *module.named_buffers()]
    for name, t in tensors:
        versions[name] = (id(t), t._version)
        shapes[name] = (tuple(t.shape), t.dtype)
    try:
        named = list(module.named_modules(remove_duplicate=False))
    except TypeError:
        named = list(module.named_modules())
    mods = tuple((n, type(m)) for n, m in named)
    return _Fingerprint(versions, shapes, mods)


def _changes(before: _Fingerprint, after: _Fingerprint) -> set[str]:
    found: set[str] = set()
    if before.shapes != after.shapes or before.modules != after.modules:
        found.add("structure")
    for name, (ident, version) in before.versions.items():
        now = after.versions.get(name)
        if now is not None and (now[0] != ident or now[1] != version):
            found.add("weights")
            break
    return found


def _check_declared(spec: PassSpec, module: nn.Module, result: PassResult, before: _Fingerprint, ctx: PassContext) -> None:
    if not isinstance(result, PassResult):
        raise PassError(f"pass {spec.name!r} returned {type(result).__name__}, not a PassResult")
    if result.module is not module:
        if "module" not in spec.mutates:
            raise PassError(f"pass {spec.name!r} returned a different module but declares mutates={sorted(spec.mutates)}")
        return
    found = _changes(before, _fingerprint(module))
    # a weight replaced by a new tensor of the same shape counts as a value change ("weights"), and a
    # structural rewrite usually touches values too: "structure" covers both
    undeclared = found - spec.mutates - ({"weights"} if "structure" in spec.mutates else set())
    if undeclared:
        raise PassError(
            f"pass {spec.name!r} changed the module's {', '.join(sorted(undeclared))} but declares "
            f"mutates={sorted(spec.mutates) or 'nothing'}; passes that ran before it: {', '.join(ctx.ran) or 'none'}"
        )
    if found and not result.modified:
        raise PassError(f"pass {spec.name!r} changed the module's {', '.join(sorted(found))} but reports modified=False")


# ---- running --------------------------------------------------------------------------------------
def _module_text(module: nn.Module) -> str:
    if isinstance(module, torch.fx.GraphModule):
        return module.code
    return repr(module)


def _dump(ctx: PassContext, index: int, name: str, text: str) -> None:
    if ctx.dump_dir is None:
        return
    ctx.dump_dir.mkdir(parents=True, exist_ok=True)
    (ctx.dump_dir / f"{index:02d}-{name}.txt").write_text(text)


def run_pass(st: Stage, module: nn.Module, ctx: PassContext) -> nn.Module:
    """Run one stage on ``module``: check its declared mutation, time and record it; return the module."""
    spec = st.spec
    index = len(ctx.ran)
    if spec.mutates:
        _dump(ctx, index, f"{spec.name}-before", _module_text(module))
    before = _fingerprint(module)
    log.info("%s ...", st.name)  # stage progress: the CLI shows it on stderr, benchmarks key memory peaks on it
    t0 = time.perf_counter()
    try:
        result = spec.fn(module, st.options, ctx)
    except PassError:
        raise
    except GraphPruneError as e:
        # user-facing errors (a NaN weight, a bad option) keep their type and message; say where
        e.stage = spec.name  # type: ignore[attr-defined]
        e.add_note(f"in stage {spec.name!r}; stages that ran before it: {', '.join(ctx.ran) or 'none'}")
        raise
    except Exception as e:
        raise PassError(
            f"pass {spec.name!r} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
            f"passes that ran before it: {', '.join(ctx.ran) or 'none'}"
        ) from e
    seconds = time.perf_counter() - t0
    _check_declared(spec, module, result, before, ctx)
    details = result.report.to_dict()
    ctx.ran.append(spec.name)
    ctx.report.passes.append(PassRecord(name=spec.name, modified=result.modified, seconds=seconds, details=details))
    ctx.report.timings[st.name] = ctx.report.timings.get(st.name, 0.0) + seconds
    if spec.mutates:
        _dump(ctx, index, f"{spec.name}-after", _module_text(result.module))
    else:
        _dump(ctx, index, spec.name, json.dumps(details, indent=2, default=str))
    return result.module


def run_stages(stages: Sequence[Stage], module: nn.Module, ctx: PassContext) -> nn.Module:
    """Run ``stages`` in order, each on what the previous one returned."""
    for st in stages:
        module = run_pass(st, module, ctx)
    return module
