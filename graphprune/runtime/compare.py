"""The one tolerance policy, and output comparison for every parity check graphprune makes.

Every "these two computations agree" check in graphprune (masked == folded == compressed == ONNX in
onnxruntime) goes through :func:`compare_outputs` with tolerances from :func:`tolerance_for`. There is
no other default and no ``rtol=1`` anywhere.

Policy
------
An element passes when::

    |c - r| <= atol * max(1, max|r|) + rtol * |r|

``atol`` is *scaled by the output's magnitude*: two runtimes summing the same dot products in a
different order disagree by a fraction of the size of the numbers involved, not by a fixed absolute
amount, so a deep net whose logits reach 30 gets 30x the absolute slack of one whose outputs stay
below 1, while outputs of size <= 1 get plain ``atol``. ``rtol`` still bounds each element relative
to itself.

=========  ======  ======  ===========================================================
dtype      rtol    atol    why
=========  ======  ======  ===========================================================
float64    1e-7    1e-7    ~1e9 eps; only reordering noise is expected
float32    1e-4    1e-4    ~1e3 eps (1.2e-7); covers MLAS/oneDNN vs ATen GEMM order over
                           a few dozen layers, still catches a single wrong weight
float16    1e-2    1e-2    ~10 eps (9.8e-4), fp16 accumulation differs across kernels
bfloat16   3e-2    3e-2    ~4 eps (7.8e-3)
int/bool   0       0       exact
=========  ======  ======  ===========================================================

Statistics: ``max_abs`` is the largest ``|c - r|``; ``max_rel`` is ``max_abs / max|r|`` per output
(relative to the output's scale; element-wise relative error explodes near zero and says nothing);
``cosine`` is the cosine similarity of the flattened outputs (1.0 when both are all zeros).

Pytrees (tensors, numpy arrays, tuples, lists, dicts, HF ``ModelOutput``) are flattened with
``torch.utils._pytree`` in the same order the ONNX exporter flattens model outputs; ``None`` leaves
and non-array leaves (Python numbers, strings) are dropped, as the exporter drops them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from graphprune.errors import ConfigError, ValidationError

__all__ = [
    "OutputStats",
    "ParityStats",
    "Tolerance",
    "assert_close",
    "compare_outputs",
    "flatten_outputs",
    "merge_parity",
    "tolerance_for",
]


@dataclass(frozen=True)
class Tolerance:
    """``|c - r| <= atol * max(1, max|r|) + rtol * |r|`` element-wise (see the module docstring)."""

    rtol: float
    atol: float

    def to_dict(self) -> dict[str, float]:
        return {"rtol": self.rtol, "atol": self.atol}


_TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-7, atol=1e-7),
    "float32": Tolerance(rtol=1e-4, atol=1e-4),
    "float16": Tolerance(rtol=1e-2, atol=1e-2),
    "bfloat16": Tolerance(rtol=3e-2, atol=3e-2),
    "exact": Tolerance(rtol=0.0, atol=0.0),
}
_EXACT_KINDS = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        return {"float": "float32", "double": "float64", "half": "float16", "bf16": "bfloat16"}.get(name, name)
    try:
        return str(np.dtype(dtype))
    except TypeError:
        return str(dtype)


def tolerance_for(dtype: Any) -> Tolerance:
    """The tolerance for outputs computed in ``dtype`` (torch dtype, numpy dtype or name).

    Raises :class:`~graphprune.errors.ConfigError` for a dtype the policy does not cover.
    """
    name = _dtype_name(dtype)
    if name in _TOLERANCES:
        return _TOLERANCES[name]
    if name in _EXACT_KINDS:
        return _TOLERANCES["exact"]
    raise ConfigError(
        f"no tolerance policy for dtype {name!r}; known: float64, float32, float16, bfloat16 and integer/bool (exact)"
    )


@dataclass
class OutputStats:
    """How one flattened output compares."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    ok: bool
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    mismatched: int  # elements outside the tolerance
    numel: int
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class ParityStats:
    """Summary of a comparison of two output pytrees."""

    ok: bool
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine_min: float
    n_outputs: int
    per_output: list[OutputStats]
    tolerance: Tolerance
    name: str = ""
    message: str = ""
    how: str = ""  # what was compared with what (runtime, dtype of each side)
    batch_sizes: list[int] = field(default_factory=list)  # batch sizes checked (parity at several sizes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "name": self.name,
            "how": self.how,
            "batch_sizes": list(self.batch_sizes),
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "mean_abs": self.mean_abs,
            "cosine_min": self.cosine_min,
            "n_outputs": self.n_outputs,
            "tolerance": self.tolerance.to_dict(),
            "message": self.message,
            "per_output": [o.to_dict() for o in self.per_output],
        }

    def summary(self) -> str:
        what = f"{self.name}: " if self.name else ""
        verdict = "ok" if self.ok else "MISMATCH"
        batches = f" at batch {', '.join(map(str, self.batch_sizes))}" if self.batch_sizes else ""
        text = (
            f"{what}parity {verdict} over {self.n_outputs} output(s){batches}: max_abs {self.max_abs:.3g}, "
            f"max_rel {self.max_rel:.3g}, mean_abs {self.mean_abs:.3g}, cosine_min {self.cosine_min:.6f} "
            f"(rtol {self.tolerance.rtol:g}, atol {self.tolerance.atol:g} x scale)"
        )
        return text + (f"; {self.message}" if self.message else "")


# ---- flattening ---------------------------------------------------------------------------------
def _is_array_leaf(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray, np.generic))


def flatten_outputs(tree: Any) -> list[Any]:
    """Tensor-like leaves of a pytree in ``torch.utils._pytree`` order (``None`` and Python scalars dropped).

    A list of arrays (what onnxruntime returns) flattens to itself.
    """
    return [leaf for leaf in pytree.tree_leaves(tree) if _is_array_leaf(leaf)]


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64, torch.float16):
            t = t.to(torch.float32)  # bfloat16 / float8 have no numpy dtype
        return np.asarray(t.numpy())
    arr = np.asarray(x)
    if arr.dtype.kind == "V" or arr.dtype.name == "bfloat16":  # ml_dtypes bfloat16 from onnx
        arr = arr.astype(np.float32)
    return arr


def _leaf_dtype(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return _dtype_name(x.dtype)
    return _dtype_name(np.asarray(x).dtype)


_PRECISION_ORDER = ("bfloat16", "float16", "float32", "float64")


def _looser(a: str, b: str) -> str:
    """The less precise of two dtype names (tolerance follows the weaker side)."""
    if a in _PRECISION_ORDER and b in _PRECISION_ORDER:
        return min(a, b, key=_PRECISION_ORDER.index)
    if a in _PRECISION_ORDER:
        return a
    return b


def _compare_one(i: int, ref: Any, cand: Any, tol: Tolerance, dtype: str, name: str) -> OutputStats:
    r = _to_numpy(ref)
    c = _to_numpy(cand)
    label = f"{name}[{i}]" if name else f"output {i}"
    if r.shape != c.shape:
        return OutputStats(
            i, label, tuple(r.shape), dtype, False, math.inf, math.inf, math.inf, 0.0, max(r.size, c.size), r.size,
            message=f"shape mismatch: reference {tuple(r.shape)} vs candidate {tuple(c.shape)}",
        )
    n = int(r.size)
    if n == 0:
        return OutputStats(i, label, tuple(r.shape), dtype, True, 0.0, 0.0, 0.0, 1.0, 0, 0)
    r64 = r.astype(np.float64)
    c64 = c.astype(np.float64)
    both_nan = np.isnan(r64) & np.isnan(c64)
    same_inf = np.isinf(r64) & (r64 == c64)
    special = both_nan | same_inf
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(special, 0.0, np.abs(c64 - r64))
    diff = np.where(np.isnan(diff), math.inf, diff)
    finite_r = np.abs(r64[np.isfinite(r64)])
    scale = float(finite_r.max()) if finite_r.size else 0.0
    allowed = tol.atol * max(1.0, scale) + tol.rtol * np.where(np.isfinite(r64), np.abs(r64), 0.0)
    bad = diff > allowed
    mismatched = int(bad.sum())
    max_abs = float(diff.max())
    mean_abs = float(diff.mean())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    rf = np.where(special, 0.0, r64).ravel()
    cf = np.where(special, 0.0, c64).ravel()
    if not (np.isfinite(rf).all() and np.isfinite(cf).all()):
        cosine = 0.0
    else:
        nr, nc = float(np.linalg.norm(rf)), float(np.linalg.norm(cf))
        cosine = 1.0 if nr == 0 and nc == 0 else (float(rf @ cf) / (nr * nc) if nr > 0 and nc > 0 else 0.0)
    msg = ""
    if mismatched:
        worst = np.unravel_index(int(np.argmax(diff - allowed)), r.shape)
        msg = (
            f"{mismatched}/{n} elements outside tolerance; worst at {tuple(int(j) for j in worst)}: "
            f"reference {r64[worst]:.6g} vs candidate {c64[worst]:.6g}"
        )
    return OutputStats(
        i, label, tuple(r.shape), dtype, mismatched == 0, max_abs, max_rel, mean_abs, cosine, mismatched, n, msg
    )


def compare_outputs(reference: Any, candidate: Any, *, dtype: Any = None, name: str = "") -> ParityStats:
    """Compare two output pytrees leaf by leaf under the tolerance policy.

    ``dtype``: the precision the computation ran in; by default each output's tolerance follows the
    less precise of its two sides (float16 reference vs float32 candidate uses float16 tolerance).
    A different number of outputs, or a shape mismatch, gives ``ok=False`` with a message.
    """
    refs = flatten_outputs(reference)
    cands = flatten_outputs(candidate)
    forced = _dtype_name(dtype) if dtype is not None else None
    fixed_tol = tolerance_for(forced) if forced is not None else None
    per: list[OutputStats] = []
    used: list[Tolerance] = []
    for i, (r, c) in enumerate(zip(refs, cands)):
        dname = forced or _looser(_leaf_dtype(r), _leaf_dtype(c))
        tol = fixed_tol or tolerance_for(dname)
        used.append(tol)
        per.append(_compare_one(i, r, c, tol, dname, name))
    messages = [o.message and f"{o.name}: {o.message}" for o in per if not o.ok]
    ok = all(o.ok for o in per)
    if len(refs) != len(cands):
        ok = False
        messages.insert(0, f"reference has {len(refs)} outputs, candidate has {len(cands)}")
    if not refs and not cands:
        messages.append("nothing to compare (no tensor outputs)")
        ok = False
    tolerance = fixed_tol or (max(used, key=lambda t: (t.rtol, t.atol)) if used else tolerance_for("float32"))
    total = sum(o.numel for o in per)
    mean_abs = sum(o.mean_abs * o.numel for o in per) / total if total else 0.0
    return ParityStats(
        ok=ok,
        max_abs=max((o.max_abs for o in per), default=0.0),
        max_rel=max((o.max_rel for o in per), default=0.0),
        mean_abs=float(mean_abs),
        cosine_min=min((o.cosine for o in per), default=1.0),
        n_outputs=len(refs),
        per_output=per,
        tolerance=tolerance,
        name=name,
        message="; ".join(m for m in messages if m),
    )


def assert_close(reference: Any, candidate: Any, *, dtype: Any = None, name: str = "") -> ParityStats:
    """:func:`compare_outputs`, raising :class:`~graphprune.errors.ValidationError` with the statistics when not ok."""
    stats = compare_outputs(reference, candidate, dtype=dtype, name=name)
    if not stats.ok:
        raise ValidationError(stats.summary())
    return stats



def merge_parity(stats: list[ParityStats], *, name: str = "", how: str = "", batch_sizes: list[int] | None = None) -> ParityStats:
    """One record for several comparisons of the same outputs (e.g. at two batch sizes): ok when all are;
    worst statistics; ``per_output`` of all of them in order."""
    if not stats:
        raise ValueError("merge_parity needs at least one ParityStats")
    if len(stats) == 1 and not how and batch_sizes is None:
        return stats[0]
    per = [o for s in stats for o in s.per_output]
    total = sum(o.numel for o in per)
    return ParityStats(
        ok=all(s.ok for s in stats),
        max_abs=max(s.max_abs for s in stats),
        max_rel=max(s.max_rel for s in stats),
        mean_abs=float(sum(o.mean_abs * o.numel for o in per) / total) if total else 0.0,
        cosine_min=min(s.cosine_min for s in stats),
        n_outputs=stats[0].n_outputs,
        per_output=per,
        tolerance=max((s.tolerance for s in stats), key=lambda t: (t.rtol, t.atol)),
        name=name or stats[0].name,
        message="; ".join(s.message for s in stats if s.message),
        how=how,
        batch_sizes=list(batch_sizes or []),
    )
