"""Step 2 of structured pruning, *score*: the importance of every unit of each candidate group, gathered
from the model (weights, gradients, activations) and reduced with the pure maths of
:mod:`graphprune.sparsity.structured`.

Read-only on the model except for gradients (cleared afterwards, ``requires_grad`` restored).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from graphprune._module_tensors import inference
from graphprune.analysis.groups import ChannelGroup
from graphprune.errors import WeightError
from graphprune.sparsity import structured as S


def proxy_loss(out: Any) -> torch.Tensor:
    """Loss for Taylor scores without labels: the model's own ``loss`` if it returns one, else the
    mean square of every floating output (the first-order change of the outputs' energy)."""
    loss = getattr(out, "loss", None)
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        return loss
    import torch.utils._pytree as pytree

    leaves = [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor) and x.is_floating_point() and x.requires_grad]
    if not leaves:
        raise WeightError("taylor importance needs a differentiable floating output; the model returned none")
    return sum((x.float().pow(2).mean() for x in leaves), torch.zeros(()))


def batches(calibration: Iterable[Any] | None, example_inputs: tuple[Any, ...]) -> Iterable[tuple[Any, ...]]:
    if calibration is None:
        return [example_inputs]
    return (b if isinstance(b, tuple) else (tuple(b) if isinstance(b, list) else (b,)) for b in calibration)


def _progress(it: Iterable[Any], on: bool, desc: str) -> Iterable[Any]:
    if not on:
        return it
    try:
        from tqdm.auto import tqdm

        return tqdm(it, desc=desc, leave=False)
    except ImportError:  # pragma: no cover
        return it


def accumulate_taylor(model: nn.Module, batches: Iterable[tuple[Any, ...]], *, progress: bool = False) -> dict[str, torch.Tensor]:
    """``sum over batches |grad * w|`` per parameter fqn (first-order Taylor importance)."""
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items() if p.is_floating_point()}
    try:
        for p in params.values():
            if p.is_floating_point():
                p.requires_grad_(True)
        for batch in _progress(batches, progress, "taylor"):
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                proxy_loss(model(*batch)).backward()
            for n, p in params.items():
                if p.grad is not None and n in acc:
                    acc[n] += (p.grad.detach().float() * p.detach().float()).abs()
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(flags[n])
    return acc


def accumulate_activations(model: nn.Module, modules: Iterable[str], batches: Iterable[tuple[Any, ...]], *, progress: bool = False) -> dict[str, torch.Tensor]:
    """Mean ``|output|`` per output channel of each named module over the batches."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = defaultdict(int)
    hooks = []

    def make(name: str, mod: nn.Module) -> Callable[..., None]:
        dim = 1 if isinstance(mod, nn.modules.conv._ConvNd) else -1

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor):
                return
            x = out.detach().float().abs().movedim(dim, 0)
            v = x.reshape(x.shape[0], -1).mean(dim=1)
            sums[name] = sums[name] + v if name in sums else v
            counts[name] += 1

        return hook

    for name in set(modules):
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            continue
        hooks.append(mod.register_forward_hook(make(name, mod)))
    try:
        with torch.no_grad():
            for batch in _progress(batches, progress, "activations"):
                model(*batch)
    finally:
        for h in hooks:
            h.remove()
    return {k: v / counts[k] for k, v in sums.items()}


def group_importance(
    model: nn.Module,
    group: ChannelGroup,
    method: str,
    *,
    taylor: dict[str, torch.Tensor] | None = None,
    activations: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-unit importance of ``group`` (see :mod:`graphprune.sparsity.structured`)."""
    per_tensor: list[torch.Tensor] = []
    params = dict(model.named_parameters(remove_duplicate=False))
    for m in group.members:
        t = params.get(m.target)
        if t is None or not t.is_floating_point():
            continue
        if method == "bn_scale":
            owner = model.get_submodule(m.target.rpartition(".")[0]) if "." in m.target else model
            if not (isinstance(owner, nn.modules.batchnorm._BatchNorm) and m.target.endswith(".weight")):
                continue
            idx = t.detach().float().abs().narrow(0, m.offset, m.size)
        elif method == "taylor" and taylor is not None:
            if m.target not in taylor:
                continue
            idx = S.axis_scores(taylor[m.target], m.axis, m.offset, m.size, p=1)
        elif method == "activation" and activations is not None:
            if not m.producer:
                continue
            act = activations.get(m.target.rpartition(".")[0])
            if act is None or act.numel() < m.offset + m.size:
                continue
            idx = act[m.offset : m.offset + m.size]
        else:
            idx = S.axis_scores(t, m.axis, m.offset, m.size, p=2 if method == "l2" else 1)
        per_tensor.append(S.unit_scores(idx, group.units))
    if not per_tensor:
        if method in ("bn_scale", "activation", "taylor"):
            return group_importance(model, group, "l1")
        return torch.ones(group.units)
    return S.combine_scores(per_tensor)


def score_groups(
    model: nn.Module,
    candidates: Sequence[tuple[ChannelGroup, Any]],
    example_inputs: tuple[Any, ...],
    calibration: Iterable[tuple[Any, ...]] | None = None,
    *,
    progress: bool = False,
) -> dict[int, torch.Tensor]:
    """group id -> per-unit importance, by each candidate pattern's ``importance`` method.

    Gradients (``taylor``) and activations (``activation``) are gathered once, over ``calibration``
    (the example inputs when None), for the groups that ask for them.
    """
    taylor = activations = None
    methods = {p.importance for _, p in candidates}
    if "taylor" in methods:
        taylor = accumulate_taylor(model, batches(calibration, example_inputs), progress=progress)
    if "activation" in methods:
        mods = {m.target.rpartition(".")[0] for g, p in candidates if p.importance == "activation" for m in g.producer_members}
        with inference(model):
            activations = accumulate_activations(model, mods, batches(calibration, example_inputs), progress=progress)
    return {g.id: group_importance(model, g, p.importance, taylor=taylor, activations=activations) for g, p in candidates}


__all__ = ["accumulate_activations", "accumulate_taylor", "batches", "group_importance", "proxy_loss", "score_groups"]
