"""remove_channels: physically slice parameters and buffers, and resize the modules that own them.

IR: the eager ``nn.Module`` (the graph was only read to find the groups). Mutates in place.

Pre-condition: ``keep`` maps ``(tensor fqn, axis)`` to the sorted indices to keep along that axis,
computed from coupled groups so that every producer, pass-through and consumer of a removed channel
is sliced together (see ``graphprune.analysis.groups``).

Post-conditions:
- every listed tensor is replaced by ``t.index_select(axis, keep)`` (a fresh ``nn.Parameter`` with the
  same ``requires_grad`` for parameters); every module attribute that referenced the same tensor
  object (tied weights) gets the same new tensor, so ties survive;
- the size attributes that forward code reads are updated: ``Linear.in/out_features``,
  ``Conv*d.in/out_channels`` and ``groups`` (depthwise), ``BatchNorm.num_features``,
  ``LayerNorm.normalized_shape``, ``Embedding.num_embeddings/embedding_dim``, transformers
  ``Conv1D.nf/nx``;
- the returned report lists the new shapes and every attribute changed (the architecture delta).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from graphprune._module_tensors import get_tensor, replace_tensor, tensor_refs


@dataclass
class RemoveChannelsReport:
    tensors: dict[str, list[int]] = field(default_factory=dict)  # fqn -> new shape
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)  # module fqn -> {attr: new value}


def remove_channels(model: nn.Module, keep: Mapping[tuple[str, int], torch.Tensor]) -> RemoveChannelsReport:
    """Slice every ``(fqn, axis)`` in ``keep`` and resize the owning modules; return what changed."""
    report = RemoveChannelsReport()
    by_target: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    for (fqn, axis), idx in keep.items():
        by_target[fqn][axis] = idx
    refs = tensor_refs(model)
    before = {name: _snapshot(mod) for name, mod in model.named_modules()}
    touched: set[str] = set()
    for fqn, axes in by_target.items():
        old = get_tensor(model, fqn)
        new = old.detach()
        for axis, idx in sorted(axes.items()):
            if idx.numel() == new.shape[axis] and bool((idx == torch.arange(new.shape[axis])).all()):
                continue
            new = new.index_select(axis, idx.to(new.device))
        if tuple(new.shape) == tuple(old.shape):
            continue
        new = new.clone().contiguous()
        for alias, *_ in refs.get(id(old), [(fqn,)]):
            report.tensors[alias] = list(new.shape)
            touched.add(alias.rpartition(".")[0])
        replace_tensor(model, fqn, new, refs)
    for mname in sorted(touched):
        mod = model.get_submodule(mname) if mname else model
        changes = fix_module_attrs(mod, before.get(mname, {}))
        if changes:
            report.modules[mname] = changes
    return report


def _snapshot(mod: nn.Module) -> dict[str, Any]:
    keys = ("in_features", "out_features", "in_channels", "out_channels", "groups", "num_features", "normalized_shape", "num_embeddings", "embedding_dim", "nf", "nx")
    return {k: getattr(mod, k) for k in keys if isinstance(getattr(mod, k, None), (int, tuple))}


def fix_module_attrs(mod: nn.Module, old: Mapping[str, Any]) -> dict[str, Any]:
    """Set the size attributes of ``mod`` from its (already sliced) tensors; return the ones that changed."""
    new: dict[str, Any] = {}
    w = mod._parameters.get("weight")
    if isinstance(mod, nn.Linear) and w is not None:
        new = {"out_features": w.shape[0], "in_features": w.shape[1]}
    elif isinstance(mod, nn.modules.conv._ConvNd) and w is not None:
        old_groups = int(old.get("groups", mod.groups))
        old_in = int(old.get("in_channels", mod.in_channels))
        old_out = int(old.get("out_channels", mod.out_channels))
        if mod.transposed:
            new = {"in_channels": w.shape[0], "out_channels": w.shape[1] * old_groups}
        elif old_groups > 1 and old_groups == old_in:
            mult = old_out // old_groups
            new = {"out_channels": w.shape[0], "in_channels": w.shape[0] // mult, "groups": w.shape[0] // mult}
        else:
            new = {"out_channels": w.shape[0], "in_channels": w.shape[1] * old_groups}
    elif isinstance(mod, nn.modules.batchnorm._NormBase):
        ref = w if w is not None else mod._buffers.get("running_mean")
        if ref is not None:
            new = {"num_features": ref.shape[0]}
    elif isinstance(mod, nn.LayerNorm) and w is not None:
        new = {"normalized_shape": tuple(w.shape)}
    elif isinstance(mod, nn.Embedding) and w is not None:
        new = {"num_embeddings": w.shape[0], "embedding_dim": w.shape[1]}
    elif type(mod).__name__ == "Conv1D" and w is not None and hasattr(mod, "nf"):
        new = {"nf": w.shape[1]}
        if hasattr(mod, "nx"):
            new["nx"] = w.shape[0]
    changed: dict[str, Any] = {}
    for k, v in new.items():
        v = tuple(int(x) for x in v) if isinstance(v, tuple) else int(v)
        if getattr(mod, k, None) != v:
            setattr(mod, k, v)
            changed[k] = list(v) if isinstance(v, tuple) else v
    return changed


__all__ = ["RemoveChannelsReport", "fix_module_attrs", "remove_channels"]
