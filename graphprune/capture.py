"""Capture a model as a graph, with fallbacks.

Order: ``torch.export.export(strict=False)`` (works on HF transformers), then
``torch.fx.symbolic_trace``, then a module walk without a graph (only whitelisted module types;
no structured pruning). :class:`Capture` records which method ran and why the others failed.

Post-conditions: ``Capture.module`` is the module the passes rewrite (the caller's copy, never the
caller's own object); ``Capture.graph`` is the fx graph that analysis reads (``None`` for the walk);
for torch.export, ``Capture.param_of_placeholder`` maps lifted placeholders to parameter fqns.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from graphprune.errors import UnsupportedModelError

log = logging.getLogger(__name__)

MethodT = Literal["export", "fx", "walk"]
METHODS: tuple[MethodT, ...] = ("export", "fx", "walk")


@dataclass
class Capture:
    method: MethodT
    module: nn.Module
    graph: torch.fx.Graph | None
    exported: Any = None  # torch.export.ExportedProgram for method == "export"
    param_of_placeholder: dict[str, str] = field(default_factory=dict)
    buffer_of_placeholder: dict[str, str] = field(default_factory=dict)
    tried: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"method": self.method, "tried": self.tried}


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:400]


def capture(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    *,
    methods: tuple[MethodT, ...] = METHODS,
    example_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
) -> Capture:
    """Capture ``model`` (which the caller has already copied) with the first method that works.

    ``progress``: a bar over the methods tried (torch.export of a 1B-parameter model takes tens of seconds).
    """
    from tqdm.auto import tqdm

    tried: list[dict[str, Any]] = []
    bar = tqdm(methods, desc="capture", unit="method", disable=not progress, leave=False)
    for method in bar:
        bar.set_postfix_str(method)
        t0 = time.perf_counter()
        try:
            cap = _CAPTURERS[method](model, example_inputs, example_kwargs or {})
        except Exception as e:  # each failure is recorded, the next method is tried
            log.debug("capture %s failed:\n%s", method, traceback.format_exc())
            tried.append({"method": method, "ok": False, "error": _short(e), "seconds": time.perf_counter() - t0})
            continue
        tried.append({"method": method, "ok": True, "error": None, "seconds": time.perf_counter() - t0})
        cap.tried = tried
        log.info("captured with %s in %.2fs", method, time.perf_counter() - t0)
        return cap
    lines = "\n".join(f"  - {t['method']}: {t['error']}" for t in tried)
    raise UnsupportedModelError(
        f"no capture method could handle {type(model).__name__}:\n{lines}\n"
        "make the model traceable by torch.export (see the first error), or pass a module whose "
        "prunable layers are standard torch.nn Linear/Conv modules"
    )


def _capture_export(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Capture:
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError("TorchScript modules cannot be captured by torch.export")
    with torch.no_grad():
        ep = torch.export.export(model, tuple(args), kwargs=kwargs or None, strict=False)
    sig = ep.graph_signature
    return Capture(
        method="export",
        module=model,
        graph=ep.graph,
        exported=ep,
        param_of_placeholder=dict(sig.inputs_to_parameters),
        buffer_of_placeholder=dict(sig.inputs_to_buffers),
    )


def _capture_fx(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Capture:
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError("TorchScript modules cannot be traced by torch.fx")
    gm = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(gm).propagate(*args)
    return Capture(method="fx", module=model, graph=gm.graph, exported=gm)


def _capture_walk(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Capture:
    return Capture(method="walk", module=model, graph=None)


_CAPTURERS = {"export": _capture_export, "fx": _capture_fx, "walk": _capture_walk}
