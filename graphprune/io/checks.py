"""Is what we were given fit to prune? Finite weights, finite tensor outputs, no overflow.

A model with NaN/Inf weights, or whose forward overflows its dtype (weights of 3e38 in float32
give Inf), would still "pass" parity: the pruned copy and its ONNX export compute the same
non-finite numbers. These checks run on the dense model before any pruning work and raise
:class:`~graphprune.errors.WeightError` naming the parameter, or the first layer whose output is
not finite, or the model output; an output that is not a tensor at all (a Python float) or is
complex raises :class:`~graphprune.errors.UnsupportedModelError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from graphprune.errors import InputError, UnsupportedModelError, WeightError

__all__ = ["check_finite", "check_finite_onnx", "check_finite_weights", "check_outputs"]


def _bad_counts(t: torch.Tensor) -> tuple[int, int]:
    finite = torch.isfinite(t)
    if bool(finite.all()):
        return 0, 0
    n_nan = int(torch.isnan(t).sum())
    return n_nan, int((~finite).sum()) - n_nan


def check_finite_weights(model: nn.Module) -> None:
    """Raise WeightError naming the first parameter that holds NaN or Inf values."""
    for name, p in model.named_parameters():
        if not (p.is_floating_point() or p.is_complex()) or p.numel() == 0:
            continue
        n_nan, n_inf = _bad_counts(p.detach())
        if n_nan or n_inf:
            raise WeightError(
                f"weight {name!r} (shape {tuple(p.shape)}) has {n_nan} NaN and {n_inf} Inf value(s) of {p.numel()}; "
                "fix the checkpoint (or exclude the layer) before pruning"
            )


def check_outputs(output: Any, label: str) -> list[torch.Tensor]:
    """The tensor leaves of a model output; UnsupportedModelError when there are none or they are complex."""
    leaves = pytree.tree_leaves(output)
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    if not tensors:
        kinds = sorted({type(v).__name__ for v in leaves}) or [type(output).__name__]
        raise UnsupportedModelError(
            f"{label} returns {', '.join(kinds)}, no tensor; graphprune compares and exports tensor outputs, "
            "so the forward must return a tensor or a tuple/list/dict of tensors"
        )
    complex_at = [i for i, t in enumerate(tensors) if t.is_complex()]
    if complex_at:
        raise UnsupportedModelError(
            f"{label}: output {complex_at[0]} is complex ({tensors[complex_at[0]].dtype}); ONNX export and the "
            "parity check support real dtypes only (return torch.view_as_real(x) instead)"
        )
    return tensors


def _first_non_finite_layer(model: nn.Module, inputs: tuple[Any, ...]) -> str | None:
    if isinstance(model, torch.jit.ScriptModule):
        return None
    found: list[str] = []

    def hook(name: str) -> Any:
        def fn(mod: nn.Module, args: Any, out: Any) -> None:
            if found:
                return
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    found.append(f"{name} ({type(mod).__name__})")
                    return

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def check_finite(model: nn.Module, inputs: tuple[Any, ...], *, label: str = "the model") -> None:
    """Weights finite, example inputs finite, and the dense forward's outputs tensors and finite.

    A forward that raises is left to the caller's own run (which reports it with its context).
    """
    check_finite_weights(model)
    for i, t in enumerate(pytree.tree_leaves(inputs)):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and any(_bad_counts(t)):
            raise InputError(f"example input {i} (shape {tuple(t.shape)}) holds NaN or Inf values; give finite inputs")
    try:
        with torch.no_grad():
            out = model(*inputs)
    except Exception:
        return
    for i, t in enumerate(check_outputs(out, label)):
        if not t.is_floating_point():
            continue
        n_nan, n_inf = _bad_counts(t)
        if n_nan or n_inf:
            layer = _first_non_finite_layer(model, inputs)
            where = f"; the first non-finite values come out of layer {layer}" if layer else ""
            raise WeightError(
                f"{label}: output {i} (shape {tuple(t.shape)}) has {n_nan} NaN and {n_inf} Inf value(s) on the example "
                f"inputs{where}: the weights overflow {t.dtype} or are not finite; fix them before pruning"
            )


def check_finite_onnx(path: str | Path) -> None:
    """Raise WeightError naming the first floating-point ONNX initializer that holds NaN or Inf."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        try:
            arr = numpy_helper.to_array(init)
        except Exception:
            continue
        if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int((~np.isfinite(arr)).sum()) - n_nan
            raise WeightError(f"ONNX initializer {init.name!r} in {path} has {n_nan} NaN and {n_inf} Inf value(s); fix the model before pruning")
