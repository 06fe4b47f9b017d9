"""Fidelity: how far pruning moved the model from the dense one, measured on evaluation inputs.

Not ONNX parity. Parity (``runtime.compare``) proves that two forms of the *same pruned model* agree
within rounding; fidelity measures what pruning *cost*: the pruned model against the dense model it
came from, on evaluation batches kept apart from any calibration data. Every report carries both,
worded so they cannot be confused.

Per output (the model's outputs are walked as a pytree: tensors, tuples, lists, dicts, HF
``ModelOutput``; non-floating leaves are skipped) the output is cut into vectors along its last axis
and each pruned vector is compared with its dense one:

=================  ====================================  =========================================
output shape       vectors compared                      kind
=================  ====================================  =========================================
named ``*logit*``  every position ``[..., C]``           ``logits`` (+ top-1 agreement)
or in ``logits=``
``[B, T, ..., H]``  every token / position                ``tokens``
``[B, H]``         every sample                          ``samples``
``[B]`` / scalar   the whole output of each batch        ``whole``
=================  ====================================  =========================================

- cosine ``d·p / (|d| |p|)`` per vector (1 when both are zero, 0 when only one is): mean and min;
- relative L2 error ``sqrt(Σ |d - p|²) / sqrt(Σ |d|²)`` over every element of every batch;
- top-1 agreement (logits): the fraction of vectors whose argmax is the same.

Per layer (from the calibration pass, see ``passes.calibrate``): the relative output error each
layer's own pruning introduces, ``||W X - W' X||_F / ||W X||_F`` on its calibration inputs
(:class:`LayerError`), so a table can show where the damage is.

The headline (:attr:`FidelityReport.mean_cosine`, ``min_cosine``) is the *worst* output's: the drift
of a model is the largest drift over its outputs. ``to_dict()`` is the ``"fidelity"`` object of
``report.json`` (``schema`` = :data:`FIDELITY_SCHEMA_VERSION`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from graphprune.errors import InputError

__all__ = [
    "FIDELITY_SCHEMA_VERSION",
    "FidelityAccumulator",
    "FidelityReport",
    "LayerError",
    "OutputFidelity",
    "measure_fidelity",
]

FIDELITY_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class OutputFidelity:
    """Dense vs pruned for one output (see the module docstring for ``kind``)."""

    index: int
    name: str
    shape: tuple[int, ...]  # of the first batch
    kind: str  # "tokens" | "samples" | "logits" | "whole"
    count: int  # vectors compared
    mean_cosine: float
    min_cosine: float
    rel_l2: float
    top1_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "shape": list(self.shape),
            "kind": self.kind,
            "count": self.count,
            "mean_cosine": self.mean_cosine,
            "min_cosine": self.min_cosine,
            "rel_l2": self.rel_l2,
            "top1_agreement": self.top1_agreement,
        }


@dataclass(frozen=True)
class LayerError:
    """The output error one layer's pruning introduces on its calibration inputs."""

    param: str
    output_error: float  # ||W X - W' X||_F / ||W X||_F
    method: str = ""
    rows: int = 0  # calibration rows (tokens / positions) it was measured on

    def to_dict(self) -> dict[str, Any]:
        return {"param": self.param, "output_error": self.output_error, "method": self.method, "rows": self.rows}


@dataclass(frozen=True)
class FidelityReport:
    """Fidelity of a pruned model to its dense original; ``to_dict()`` is report.json's ``"fidelity"``."""

    outputs: tuple[OutputFidelity, ...]
    batches: int
    samples: int
    source: str  # where the evaluation batches came from: "eval", "calibration holdout", "example inputs"
    notes: tuple[str, ...] = ()
    layers: tuple[LayerError, ...] = ()
    schema: int = field(default=FIDELITY_SCHEMA_VERSION)

    @property
    def worst(self) -> OutputFidelity | None:
        return min(self.outputs, key=lambda o: o.mean_cosine) if self.outputs else None

    @property
    def mean_cosine(self) -> float:
        w = self.worst
        return w.mean_cosine if w is not None else 1.0

    @property
    def min_cosine(self) -> float:
        return min((o.min_cosine for o in self.outputs), default=1.0)

    @property
    def drift(self) -> float:
        """``1 - mean_cosine`` of the worst output (what an accuracy budget's ``max_drift`` bounds)."""
        return 1.0 - self.mean_cosine

    def with_layers(self, layers: Iterable[LayerError]) -> FidelityReport:
        return FidelityReport(self.outputs, self.batches, self.samples, self.source, self.notes, tuple(layers), self.schema)

    def with_notes(self, *notes: str) -> FidelityReport:
        return FidelityReport(self.outputs, self.batches, self.samples, self.source, self.notes + notes, self.layers, self.schema)

    def summary(self) -> str:
        """One line, worded so nobody mistakes it for ONNX parity."""
        w = self.worst
        if w is None:
            return "fidelity to the dense model: no floating-point outputs to compare"
        per = {"tokens": "per token", "samples": "per sample", "logits": "per position", "whole": "per batch"}[w.kind]
        where = f" of {w.name}" if len(self.outputs) > 1 else ""
        text = (
            f"fidelity to the dense model: mean cosine {w.mean_cosine:.3f} (min {self.min_cosine:.2f}) {per}{where} "
            f"over {self.samples} {self.source} samples; rel L2 {w.rel_l2:.2f}"
        )
        if w.top1_agreement is not None:
            text += f"; top-1 agreement {100 * w.top1_agreement:.1f}%"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "what": "pruned model vs the dense model on evaluation inputs (not ONNX parity)",
            "source": self.source,
            "batches": self.batches,
            "samples": self.samples,
            "mean_cosine": self.mean_cosine,
            "min_cosine": self.min_cosine,
            "drift": self.drift,
            "summary": self.summary(),
            "notes": list(self.notes),
            "outputs": [o.to_dict() for o in self.outputs],
            "layers": [layer.to_dict() for layer in self.layers],
        }


# ---- accumulation ---------------------------------------------------------------------------------


def _key_name(path: Sequence[Any]) -> str:
    parts: list[str] = []
    for k in path:
        if isinstance(k, pytree.MappingKey):
            parts.append(f".{k.key}")
        elif isinstance(k, pytree.SequenceKey):
            parts.append(f"[{k.idx}]")
        elif isinstance(k, pytree.GetAttrKey):
            parts.append(f".{k.name}")
        else:
            parts.append(str(k))
    text = "".join(parts).lstrip(".")
    return text if text and not text.startswith("[") else f"output{text}"


def _leaves(tree: Any) -> list[tuple[str, torch.Tensor]]:
    out = []
    for path, leaf in pytree.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, np.ndarray):
            leaf = torch.from_numpy(leaf)
        if isinstance(leaf, torch.Tensor) and (leaf.is_floating_point() or leaf.is_complex()):
            out.append((_key_name(path), leaf))
    return out


@dataclass
class _Acc:
    name: str
    shape: tuple[int, ...]
    kind: str
    count: int = 0
    cos_sum: float = 0.0
    cos_min: float = 1.0
    err_sq: float = 0.0
    ref_sq: float = 0.0
    agree: int = 0


class FidelityAccumulator:
    """Adds up dense vs pruned outputs batch by batch; :meth:`report` gives the :class:`FidelityReport`.

    ``logits``: output names (as in the report, e.g. ``"logits"``, ``"output[0]"``) or indices to treat
    as logits (top-1 agreement, per position); outputs whose name contains ``logit`` always are.
    """

    def __init__(self, *, logits: Iterable[str | int] = ()) -> None:
        self.logits = set(logits)
        self.outputs: list[_Acc] = []
        self.batches = 0
        self.samples = 0

    def _kind(self, index: int, name: str, t: torch.Tensor) -> str:
        if index in self.logits or name in self.logits or "logit" in name.lower():
            return "logits" if t.dim() >= 1 else "whole"
        if t.dim() >= 3:
            return "tokens"
        if t.dim() == 2:
            return "samples"
        return "whole"

    @torch.no_grad()
    def add(self, dense_out: Any, pruned_out: Any) -> None:
        d_leaves, p_leaves = _leaves(dense_out), _leaves(pruned_out)
        if [n for n, _ in d_leaves] != [n for n, _ in p_leaves]:
            raise InputError(
                f"the pruned model's outputs ({', '.join(n for n, _ in p_leaves)}) are not the dense model's "
                f"({', '.join(n for n, _ in d_leaves)}); fidelity compares outputs one to one"
            )
        if not self.outputs:
            self.outputs = [_Acc(n, tuple(t.shape), self._kind(i, n, t)) for i, (n, t) in enumerate(d_leaves)]
        elif len(self.outputs) != len(d_leaves):
            raise InputError(f"batch {self.batches} gave {len(d_leaves)} outputs, the first batch gave {len(self.outputs)}")
        for acc, (name, d), (_, p) in zip(self.outputs, d_leaves, p_leaves):
            if d.shape != p.shape:
                raise InputError(
                    f"output {name}: the pruned model gives shape {tuple(p.shape)}, the dense model {tuple(d.shape)}"
                )
            d64 = d.detach().to("cpu", torch.float64)
            p64 = p.detach().to("cpu", torch.float64)
            if acc.kind == "whole":
                dv, pv = d64.reshape(1, -1), p64.reshape(1, -1)
            else:
                dv, pv = d64.reshape(-1, d64.shape[-1]), p64.reshape(-1, p64.shape[-1])
            finite = torch.isfinite(dv).all(1) & torch.isfinite(pv).all(1)
            nd, np_ = dv.norm(dim=1), pv.norm(dim=1)
            dot = (dv * pv).sum(1)
            cos = torch.where(
                (nd == 0) & (np_ == 0),
                torch.ones_like(dot),
                torch.where((nd > 0) & (np_ > 0), dot / (nd * np_).clamp_min(1e-300), torch.zeros_like(dot)),
            )
            cos = torch.where(finite, cos.clamp(-1.0, 1.0), torch.zeros_like(cos))
            acc.count += int(cos.numel())
            acc.cos_sum += float(cos.sum())
            acc.cos_min = min(acc.cos_min, float(cos.min())) if cos.numel() else acc.cos_min
            diff = torch.where(torch.isfinite(pv - dv), pv - dv, torch.full_like(dv, math.inf))
            acc.err_sq += float(diff.square().sum())
            acc.ref_sq += float(torch.nan_to_num(dv, nan=0.0, posinf=0.0, neginf=0.0).square().sum())
            if acc.kind == "logits":
                acc.agree += int((dv.argmax(1) == pv.argmax(1)).sum())
        self.batches += 1
        first = d_leaves[0][1] if d_leaves else None
        self.samples += int(first.shape[0]) if first is not None and first.dim() >= 1 else 1

    def report(self, *, source: str = "eval", notes: Iterable[str] = (), layers: Iterable[LayerError] = ()) -> FidelityReport:
        outs = []
        for i, a in enumerate(self.outputs):
            if a.ref_sq > 0:
                rel = math.sqrt(a.err_sq / a.ref_sq) if math.isfinite(a.err_sq) else math.inf
            else:
                rel = 0.0 if a.err_sq == 0 else math.inf
            outs.append(
                OutputFidelity(
                    index=i,
                    name=a.name,
                    shape=a.shape,
                    kind=a.kind,
                    count=a.count,
                    mean_cosine=a.cos_sum / a.count if a.count else 1.0,
                    min_cosine=a.cos_min,
                    rel_l2=rel,
                    top1_agreement=(a.agree / a.count if a.count else None) if a.kind == "logits" else None,
                )
            )
        return FidelityReport(tuple(outs), self.batches, self.samples, source, tuple(notes), tuple(layers))


def _call(model: Any, batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def measure_fidelity(
    dense: Callable[..., Any],
    pruned: Callable[..., Any],
    batches: Iterable[Any],
    *,
    source: str = "eval",
    logits: Iterable[str | int] = (),
    forward: Callable[[Any, Any], Any] = _call,
    notes: Iterable[str] = (),
    layers: Iterable[LayerError] = (),
) -> FidelityReport:
    """Run ``dense`` and ``pruned`` on every batch (no grad) and compare their outputs (module docstring).

    A batch is a tuple of positional inputs (``model(*batch)``), a tensor or a mapping (keyword
    inputs). Raises InputError when there are no batches or the two models' outputs differ in
    structure or shape; a batch the models fail on raises InputError naming it.
    """
    acc = FidelityAccumulator(logits=logits)
    for i, b in enumerate(batches):
        try:
            with torch.no_grad():
                d, p = forward(dense, b), forward(pruned, b)
        except Exception as e:
            raise InputError(f"evaluation batch {i} failed in the model's forward: {type(e).__name__}: {e}") from e
        acc.add(d, p)
    if acc.batches == 0:
        raise InputError("fidelity needs at least one evaluation batch; got none")
    return acc.report(source=source, notes=notes, layers=layers)
