"""The reduction axis K of a module's weight, by module type: the one table of it.

K is the axis a product sums over, which TensorRT's 2:4 kernels (and every N:M pattern here) group
along:

==========================================  ======================  =====
module                                      weight layout           K
==========================================  ======================  =====
``nn.Linear`` (and its TorchScript form)    ``[out, in]``           1
``nn.Conv1d/2d/3d``                         ``[out, in/g, *k]``     1
``nn.ConvTranspose1d/2d/3d``                ``[in, out/g, *k]``     0
transformers ``Conv1D`` (GPT-2)             ``[in, out]``           0
==========================================  ======================  =====

Graph ops carry their own K in :data:`graphprune.analysis.find_sites` 's op registry (``x @ W``: axis
0 of ``W``), ONNX nodes in :mod:`graphprune.runtime.audit`; this table serves the places that see
modules, not ops: the module walk (capture without a graph), the training side's site finder and
checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ModuleWeight", "is_hf_conv1d", "module_k_axis", "module_weight"]


@dataclass(frozen=True)
class ModuleWeight:
    """What the table says about a module's ``weight``: the op kind, its K axis and conv groups."""

    kind: str  # linear | conv | conv_transpose | hf_conv1d
    k_axis: int
    groups: int = 1


def is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2's projections, weight ``[in, out]``), recognised without importing it."""
    t = type(module)
    cls = getattr(module, "original_name", None) or t.__name__
    return cls == "Conv1D" and (t.__module__.startswith("transformers") or hasattr(module, "nf"))


def module_weight(module: nn.Module) -> ModuleWeight | None:
    """The table's row for ``module`` (None for a module type it does not know, or one without a weight)."""
    if not isinstance(getattr(module, "weight", None), torch.Tensor):
        return None
    cls = getattr(module, "original_name", None) or type(module).__name__  # TorchScript keeps the class name here
    if isinstance(module, nn.Linear) or cls in ("Linear", "NonDynamicallyQuantizableLinear", "LazyLinear"):
        return ModuleWeight("linear", 1)
    conv_names = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")
    if isinstance(module, nn.modules.conv._ConvNd) or cls in conv_names:
        groups = int(getattr(module, "groups", 1))
        if bool(getattr(module, "transposed", cls.startswith("ConvTranspose"))):
            return ModuleWeight("conv_transpose", 0, groups)
        return ModuleWeight("conv", 1, groups)
    if is_hf_conv1d(module):
        return ModuleWeight("hf_conv1d", 0)
    return None


def module_k_axis(module: nn.Module, param_name: str = "weight", custom: Mapping[type, int] | None = None) -> int | None:
    """The K axis of ``module.<param_name>`` (None for modules the table does not know).

    ``custom``: extra ``{module type: K}`` entries, checked first (the training side's whitelist).
    """
    if param_name != "weight":
        return None
    if custom:
        for t, k in custom.items():
            if isinstance(module, t):
                return k
    row = module_weight(module)
    return None if row is None else row.k_axis
