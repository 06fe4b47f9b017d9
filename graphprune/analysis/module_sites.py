"""Finding the weights to prune by walking modules (the training side and one-shot calibration use it).

:func:`find_prunable_sites` is the one place that decides which weights the training APIs prune:
ASP, gradual, movement and one-shot pruning all take their sites from it (or from an explicit list
of :class:`SiteEntry`). Without example inputs it walks ``model.named_modules()`` with a whitelist
of module types and allowed / disallowed fqn patterns, ASP style. With ``example_inputs`` it uses
the compiler's graph finder instead (:func:`find_sites_in_graph`: ``torch.export``, then
``torch.fx``, read by :func:`graphprune.analysis.find_sites.find_sites`), so weights read by
functional ``x @ W`` / ``F.linear`` calls are found too, each with the K axis its op implies.

The reduction axis K (what N:M groups run along): Linear ``[out, in]`` and Conv ``[out, in/g, *k]``:
axis 1; transformers ``Conv1D`` ``[in, out]`` and ConvTranspose ``[in, out/g, *k]``: axis 0.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from graphprune.analysis.k_axis import is_hf_conv1d as _is_hf_conv1d
from graphprune.analysis.k_axis import module_k_axis
from graphprune.errors import ConfigError
from graphprune.selector import matches_any

__all__ = ["DEFAULT_WHITELIST", "HF_CONV1D", "SiteEntry", "find_prunable_sites", "find_sites_in_graph", "module_k_axis", "unwrap"]

log = logging.getLogger(__name__)

HF_CONV1D = "transformers.Conv1D"  # whitelist entry for transformers.pytorch_utils.Conv1D (no import needed)
DEFAULT_WHITELIST: tuple[Any, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, HF_CONV1D)


@dataclass(frozen=True)
class SiteEntry:
    """One prunable weight found by :func:`find_prunable_sites`."""

    name: str  # owning module fqn
    module: nn.Module = field(repr=False)
    param_name: str  # "weight"
    k_axis: int

    @property
    def fqn(self) -> str:
        return f"{self.name}.{self.param_name}" if self.name else self.param_name

    @property
    def param(self) -> torch.Tensor:
        return getattr(self.module, self.param_name)


def _type_matches(module: nn.Module, entry: Any) -> bool:
    if isinstance(entry, type):
        return isinstance(module, entry)
    if isinstance(entry, str):
        if entry in (HF_CONV1D, "Conv1D"):
            return _is_hf_conv1d(module)
        t = type(module)
        return entry in (t.__name__, f"{t.__module__}.{t.__qualname__}")
    raise ConfigError(f"whitelist entries must be module types or type names, got {entry!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def find_prunable_sites(
    model: nn.Module,
    *,
    whitelist: Sequence[Any] = DEFAULT_WHITELIST,
    allowed_layer_names: Sequence[str] | None = None,
    disallowed_layer_names: Sequence[str] = (),
    custom_layer_dict: Mapping[type, int] | None = None,
    example_inputs: Any = None,
) -> list[SiteEntry]:
    """Walk ``model``'s modules and return the weights to prune, in module order.

    A module is a site when its type is in ``whitelist`` (types, or names such as ``"Linear"`` and
    ``"transformers.Conv1D"``) or in ``custom_layer_dict`` ({type: k_axis}), its fqn matches
    ``allowed_layer_names`` (exact names or fnmatch globs; None = all) and matches no
    ``disallowed_layer_names``. Raises ConfigError when nothing matches, listing what the model has.

    ``example_inputs`` (a tensor or tuple): find the sites in the captured graph instead
    (:func:`find_sites_in_graph`); ``whitelist`` and ``custom_layer_dict`` are then not used.
    """
    model = unwrap(model)
    if example_inputs is not None:
        return find_sites_in_graph(
            model, example_inputs, allowed_layer_names=allowed_layer_names, disallowed_layer_names=disallowed_layer_names
        )
    whitelist = tuple(whitelist) + tuple(custom_layer_dict or ())
    if not whitelist:
        raise ConfigError("whitelist is empty; give module types such as torch.nn.Linear")
    if isinstance(allowed_layer_names, str) or isinstance(disallowed_layer_names, str):
        raise ConfigError("allowed_layer_names / disallowed_layer_names must be lists of names, not one string")
    out: list[SiteEntry] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not any(_type_matches(module, w) for w in whitelist):
            continue
        if allowed_layer_names is not None and not matches_any(name, allowed_layer_names):
            continue
        if matches_any(name, disallowed_layer_names):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() < 2 or id(weight) in seen:
            continue
        k = module_k_axis(module, "weight", custom_layer_dict)
        if k is None:
            raise ConfigError(
                f"layer {name!r} ({type(module).__name__}) is whitelisted but graphprune does not know its "
                "reduction axis; add its type to custom_layer_dict={Type: k_axis}"
            )
        seen.add(id(weight))
        out.append(SiteEntry(name=name, module=module, param_name="weight", k_axis=k))
    if not out:
        types = Counter(type(m).__name__ for _, m in model.named_modules())
        have = ", ".join(f"{t}×{c}" for t, c in sorted(types.items()))
        wl = ", ".join(w.__name__ if isinstance(w, type) else str(w) for w in whitelist)
        names = [n for n, _ in model.named_modules() if n][:12]
        extra = ""
        if allowed_layer_names is not None or disallowed_layer_names:
            extra = (
                f"; allowed_layer_names={list(allowed_layer_names) if allowed_layer_names is not None else None}, "
                f"disallowed_layer_names={list(disallowed_layer_names)}; the model's layers include: {', '.join(names)}"
            )
        raise ConfigError(
            f"no layer of {type(model).__name__} matches the whitelist ({wl}){extra}. The model has: {have}"
        )
    return out


def find_sites_in_graph(
    model: nn.Module,
    example_inputs: Any,
    *,
    allowed_layer_names: Sequence[str] | None = None,
    disallowed_layer_names: Sequence[str] = (),
) -> list[SiteEntry]:
    """The sites ``graphprune.compile`` would find, as :class:`SiteEntry` records (graph order).

    The model is captured in eval mode (its modes are restored) with ``torch.export`` and then
    ``torch.fx``; every weight a Linear / Conv / ConvTranspose / HF Conv1D / matmul op reads is a
    site, with K from that op (``x @ W``: axis 0). Name filters match the owning module's fqn or
    the parameter's. Weights that are tied or also read by another op are left out and logged.
    """
    from graphprune._module_tensors import eval_mode
    from graphprune.analysis.find_sites import find_sites
    from graphprune.capture import capture

    model = unwrap(model)
    if isinstance(allowed_layer_names, str) or isinstance(disallowed_layer_names, str):
        raise ConfigError("allowed_layer_names / disallowed_layer_names must be lists of names, not one string")
    inputs = tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
    with eval_mode(model):
        scan = find_sites(capture(model, inputs, methods=("export", "fx")))
    out: list[SiteEntry] = []
    for site in scan.sites:
        names = (site.module, site.param)
        if allowed_layer_names is not None and not any(matches_any(n, allowed_layer_names) for n in names):
            continue
        if any(matches_any(n, disallowed_layer_names) for n in names):
            continue
        if site.ties or site.extra.get("other_uses"):
            shared = ", ".join(site.ties) if site.ties else f"also read by {site.extra['other_uses']}"
            log.info("graph sites: %s left dense (shares its weight: %s)", site.param, shared)
            continue
        module = model.get_submodule(site.module) if site.module else model
        out.append(SiteEntry(name=site.module, module=module, param_name=site.param.rpartition(".")[2], k_axis=site.k_axis))
    if not out:
        raise ConfigError(
            f"no prunable weight of {type(model).__name__} was found in its captured graph "
            f"(allowed_layer_names={allowed_layer_names}, disallowed_layer_names={list(disallowed_layer_names)})"
        )
    return out
