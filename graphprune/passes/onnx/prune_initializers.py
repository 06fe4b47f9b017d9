"""``prune_onnx``: prune the weight initializers of an ONNX file directly (no torch model needed).

IR: an ONNX ``ModelProto`` read from ``path_in`` (checked with ``onnx.checker``).

Pre-conditions: ``path_in`` passes ``onnx.checker``; ``path_out`` is a different file.

What it does: every MatMul/Gemm/Conv/ConvTranspose weight found by
:func:`graphprune.runtime.audit.find_weight_uses` (the same code and K axes the audit uses) gets one
:class:`~graphprune.report.Decision`. Pruned weights get a mask from
:func:`graphprune.sparsity.compute_mask` along their K axis (``Unstructured(scope="global")``
uses one threshold across every pruned weight) and are rewritten in place as ``W * mask`` in their
own dtype. Skipped, with a reason: a name filtered out by ``include``/``exclude``
(``excluded_by_filter``), a weight read by several nodes or other consumers (``tied_weight``), a
non-floating weight (``not_floating``), N:M where K % M != 0 (``k_not_divisible``), a weight stored
as a ``Constant`` node (``unsupported_op``: onnxruntime cannot override it for the parity check).

Post-conditions, checked before ``path_out`` appears (it is written atomically, and not at all
when a check fails): the result passes ``onnx.checker``; the audit finds N:M on every pruned weight
(for N:M patterns); and the ORIGINAL file run in onnxruntime with the masked weights injected via
``SessionOptions.add_initializer`` matches the written file on random inputs built from the graph's
input shapes (dynamic dims -> 1, ints in [0, 4)); both run at ``ORT_ENABLE_EXTENDED`` because
onnxruntime's layout optimizations ignore overrides (see :mod:`graphprune.runtime.ort`).
``path_in`` is never modified.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from graphprune._io import atomic_write
from graphprune.config import SemiStructured, Unstructured, parse_pattern
from graphprune.errors import ConfigError, OutputError, ValidationError
from graphprune.report import Decision, SkipReason
from graphprune.runtime.audit import (
    AuditReport,
    WeightUse,
    as_float_tensor,
    audit_onnx,
    find_weight_uses,
    load_onnx_checked,
    onnx_weight_array,
)
from graphprune.runtime.compare import ParityStats, compare_outputs
from graphprune.runtime.export import needs_external_data
from graphprune.runtime.ort import random_inputs, run_onnx
from graphprune.selector import Selector
from graphprune.sparsity import check_finite, compute_mask, global_unstructured_masks, kept_magnitude

__all__ = ["OnnxPruneResult", "prune_onnx"]

PathLike = str | os.PathLike[str]
_OP_KIND = {"MatMul": "matmul", "Gemm": "gemm", "Conv": "conv", "ConvTranspose": "conv_transpose"}


@dataclass
class OnnxPruneResult:
    """Decisions for every candidate weight, the audit of the written file, and the parity proof."""

    decisions: list[Decision]
    audit: AuditReport
    parity: ParityStats | None
    path: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "decisions": [d.to_dict() for d in self.decisions],
            "audit": self.audit.to_dict(),
            "parity": self.parity.to_dict() if self.parity is not None else None,
        }


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _names(use: WeightUse) -> list[str]:
    return [use.source, use.node] + ([use.module] if use.module else [])


def _decision(use: WeightUse, **kw: Any) -> Decision:
    numel = int(np.prod(use.shape)) if use.shape else 1
    return Decision(
        param=use.source,
        module=use.module or use.node,
        op=_OP_KIND.get(use.op, use.op.lower()),
        shape=use.shape,
        k_axis=use.k_axis,
        numel=numel,
        **kw,
    )


def _skip(use: WeightUse, reason: SkipReason, message: str, zeros: int = 0) -> Decision:
    return _decision(use, pruned=False, reason=reason, message=message, zeros=zeros)


def _masked(arr: np.ndarray, mask: torch.Tensor) -> np.ndarray:
    keep = mask.cpu().numpy().astype(bool)
    return np.where(keep, arr, np.zeros((), dtype=arr.dtype)).astype(arr.dtype)


def prune_onnx(
    path_in: PathLike,
    path_out: PathLike,
    pattern: Unstructured | SemiStructured | str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    inputs: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    validate: bool = True,
) -> OnnxPruneResult:
    """Prune the MatMul/Gemm/Conv weights of ``path_in`` and write the result to ``path_out``.

    ``pattern``: ``SemiStructured`` / ``Unstructured`` or a pattern string (``"2:4"``,
    ``"unstructured:0.5"``). ``include`` / ``exclude``: fnmatch globs matched against the initializer
    name, the node name and the module scope. ``inputs``: ONNX inputs by name for the parity check
    (random ones from the graph's input shapes by default, seeded with ``seed``). ``validate=False``
    skips the parity check (``parity`` is then None); the audit always runs.

    Raises OutputError when ``path_out`` is ``path_in``, InputError when ``path_in`` is missing or
    fails ``onnx.checker``, WeightError for NaN/Inf in a weight to prune, ValidationError when the
    written model fails the audit or the parity check (``path_out`` is then not written).
    """
    if isinstance(pattern, str):
        parsed = parse_pattern(pattern)
        if len(parsed) != 1:
            raise ConfigError(f"prune_onnx takes one element-wise pattern (N:M or unstructured), got {pattern!r}")
        pattern = parsed[0]  # type: ignore[assignment]
    if not isinstance(pattern, (SemiStructured, Unstructured)):
        raise ConfigError(
            f"prune_onnx prunes weights element-wise: pattern must be SemiStructured or Unstructured, got {pattern!r}"
        )
    src, dst = Path(path_in), Path(path_out)
    if _same_file(src, dst):
        raise OutputError(f"prune_onnx would overwrite its input {src}; give a different output path")
    if dst.is_dir():
        raise OutputError(f"output {dst} is a directory; give a file name such as {dst / src.name}")
    model, _ = load_onnx_checked(src)
    uses = find_weight_uses(model)

    by_source: dict[str, list[WeightUse]] = defaultdict(list)
    for u in uses:
        by_source[u.source].append(u)

    decisions: list[Decision] = []
    to_prune: list[tuple[WeightUse, np.ndarray]] = []
    for group in by_source.values():
        use = group[0]
        arr = onnx_weight_array(use.tensor) if use.tensor is not None else np.zeros(0)
        zeros = int(arr.size - np.count_nonzero(arr))
        if not Selector(tuple(include)).selects(*_names(use)):
            decisions.append(_skip(use, SkipReason.EXCLUDED_BY_FILTER, "matches no include glob", zeros))
        elif not Selector(exclude=tuple(exclude)).selects(*_names(use)):
            decisions.append(_skip(use, SkipReason.EXCLUDED_BY_FILTER, "matches an exclude glob", zeros))
        elif len(group) > 1 or use.uses > 1:
            readers = ", ".join(u.node for u in group)
            decisions.append(
                _skip(
                    use, SkipReason.TIED_WEIGHT,
                    f"{use.source} is read by several consumers ({use.uses} reads; weight of {readers}); "
                    "one mask cannot be chosen per reader",
                    zeros,
                )
            )
        elif not use.is_float:
            decisions.append(
                _skip(use, SkipReason.NOT_FLOATING, f"{use.source} has ONNX data type {use.data_type}", zeros)
            )
        elif use.stored_as != "initializer":
            decisions.append(
                _skip(
                    use, SkipReason.UNSUPPORTED_OP,
                    f"{use.source} is stored in a Constant node, not an initializer; turn constants into "
                    "initializers first (e.g. onnx-graphsurgeon fold) to prune it",
                    zeros,
                )
            )
        elif isinstance(pattern, SemiStructured) and use.k % pattern.m != 0:
            decisions.append(
                _skip(
                    use, SkipReason.K_NOT_DIVISIBLE,
                    f"K={use.k} (axis {use.k_axis} of {list(use.shape)}) of {use.node} is not divisible by "
                    f"M={pattern.m}",
                    zeros,
                )
            )
        else:
            to_prune.append((use, arr))

    weights = {u.source: as_float_tensor(a) for u, a in to_prune}
    for name, w in weights.items():
        check_finite(w, name)
    if isinstance(pattern, Unstructured) and pattern.scope == "global":
        masks = global_unstructured_masks(weights, pattern.sparsity)
    else:
        masks = {u.source: compute_mask(weights[u.source], pattern, axis=u.k_axis) for u, _ in to_prune}

    inits = {t.name: t for t in model.graph.initializer}
    overrides: dict[str, np.ndarray] = {}
    for use, arr in to_prune:
        mask = masks[use.source]
        new = _masked(arr, mask)
        overrides[use.source] = new
        tensor = numpy_helper.from_array(new, name=use.source)
        inits[use.source].CopyFrom(tensor)
        decisions.append(
            _decision(
                use,
                pruned=True,
                pattern=str(pattern),
                message=f"{_OP_KIND.get(use.op, use.op)} weight, K axis {use.k_axis}"
                + (f" via {'/'.join(use.path)}" if use.path else ""),
                zeros=int(new.size - np.count_nonzero(new)),
                kept_magnitude=kept_magnitude(weights[use.source], mask),
            )
        )
    order = {u.source: i for i, u in enumerate(uses)}
    decisions.sort(key=lambda d: order.get(d.param, len(order)))

    nm = (pattern.n, pattern.m) if isinstance(pattern, SemiStructured) else (None, None)
    result: dict[str, Any] = {}

    def write_and_check(tmp: Path) -> None:
        if needs_external_data(model):  # the data file gets its final name; the model file is renamed last
            onnx.save_model(
                model, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=f"{dst.name}.data"
            )
        else:
            onnx.save_model(model, tmp)
        audit = audit_onnx(tmp, n=nm[0], m=nm[1], expect=list(overrides))
        if not audit.ok:
            raise ValidationError(f"pruned ONNX for {src} fails its audit: {audit.summary()}")
        parity = None
        if validate:
            feed = dict(inputs) if inputs is not None else random_inputs(model, seed=seed)
            # both at the level where onnxruntime honours overrides, so the two runs are like for like
            reference = run_onnx(src, feed, initializers=overrides, optimization="extended")
            candidate = run_onnx(tmp, feed, optimization="extended")
            parity = compare_outputs(reference, candidate, name=f"{src.name} + masks vs {dst.name}")
            if not parity.ok:
                raise ValidationError(f"pruned ONNX does not compute what the masked original computes: {parity.summary()}")
        result["audit"], result["parity"] = audit, parity

    _write_atomically(dst, write_and_check)
    audit: AuditReport = result["audit"]
    audit.source = str(dst)
    return OnnxPruneResult(decisions=decisions, audit=audit, parity=result["parity"], path=dst)


def _write_atomically(dst: Path, write: Any) -> None:
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the directory {dst.parent} for {dst.name}: {e}") from e
    try:
        atomic_write(dst, write)
    except OSError as e:
        raise OutputError(f"cannot write ONNX file {dst}: {e}") from e
