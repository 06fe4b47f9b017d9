"""The serializable pruning plan: which weights are pruned, with which masks.

A :class:`Plan` maps parameter fqns (``encoder.layer.0.attention.self.query.weight``) to
:class:`PlanSite` records. Each record holds a boolean mask of the weight's shape (``True`` = keep),
the reduction axis K the pattern was computed along, the pattern's name and, optionally:

- ``perm``: a permutation of the K axis under which the mask is N:M. The mask itself is stored in the
  model's own layout; ``mask.index_select(k_axis, perm)`` is N:M along contiguous K. A compiler that
  wants hardware 2:4 must apply the same permutation to the layer's input channels and to their
  producers (see the permutation pass); in the masked or folded form the permutation changes nothing.
- ``values``: replacement weight values (SparseGPT updates the weights it keeps).

Training code produces and updates plans; ``compile`` freezes them. On disk a plan is a folder with
``plan.json`` (everything but tensors) and ``tensors.safetensors`` (masks as bool, perms as int64,
values in their dtype) — no pickle, so loading an untrusted plan runs no code.

``Plan.apply(model)`` checks every site against the model first and raises
:class:`~graphprune.errors.InputError` naming the layers the model lacks (and what it has) or the
shapes that differ, before it touches a single weight.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from graphprune.errors import InputError

__all__ = ["PLAN_FORMAT_VERSION", "Plan", "PlanSite"]

PLAN_FORMAT_VERSION = 1
_JSON_NAME = "plan.json"
_TENSORS_NAME = "tensors.safetensors"


@dataclass
class PlanSite:
    """One pruned weight."""

    param: str  # parameter fqn, e.g. "fc1.weight"
    mask: torch.Tensor  # bool, the weight's shape, True = keep
    k_axis: int = 1
    pattern: str = ""  # "2:4", "unstructured:0.9", "movement-hard", "torch.nn.utils.prune", ...
    perm: torch.Tensor | None = None  # int64 permutation of the K axis (see module docstring)
    values: torch.Tensor | None = None  # replacement weight values (already zero where mask is False)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.mask, torch.Tensor):
            raise InputError(f"plan site {self.param!r}: mask must be a tensor, got {type(self.mask).__name__}")
        self.mask = self.mask.detach().to(device="cpu", dtype=torch.bool).contiguous()
        if self.perm is not None:
            self.perm = self.perm.detach().to(device="cpu", dtype=torch.int64).contiguous()
            if self.perm.shape != (self.mask.shape[self.k_axis],):
                raise InputError(
                    f"plan site {self.param!r}: perm has shape {tuple(self.perm.shape)}, "
                    f"expected ({self.mask.shape[self.k_axis]},) (the size of K, axis {self.k_axis})"
                )
        if self.values is not None:
            self.values = self.values.detach().to("cpu").contiguous()
            if self.values.shape != self.mask.shape:
                raise InputError(
                    f"plan site {self.param!r}: values have shape {tuple(self.values.shape)}, "
                    f"mask has {tuple(self.mask.shape)}"
                )

    @property
    def module(self) -> str:
        return self.param.rpartition(".")[0]

    @property
    def param_name(self) -> str:
        return self.param.rpartition(".")[2]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    @property
    def sparsity(self) -> float:
        n = self.mask.numel()
        return 1.0 - float(self.mask.sum()) / n if n else 0.0

    def meta(self) -> dict[str, Any]:
        return {
            "param": self.param,
            "shape": list(self.shape),
            "k_axis": self.k_axis,
            "pattern": self.pattern,
            "sparsity": round(self.sparsity, 6),
            "has_perm": self.perm is not None,
            "has_values": self.values is not None,
            "extra": self.extra,
        }


@dataclass
class Plan:
    """Sites and their masks; see the module docstring."""

    sites: dict[str, PlanSite] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"param", "reason", "message"}
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- building ---------------------------------------------------------------------------
    def add(self, site: PlanSite) -> None:
        if site.param in self.sites:
            raise InputError(f"plan already has a site for {site.param!r}")
        self.sites[site.param] = site

    def skip(self, param: str, reason: str, message: str) -> None:
        self.skipped.append({"param": param, "reason": reason, "message": message})

    def __len__(self) -> int:
        return len(self.sites)

    def __contains__(self, param: object) -> bool:
        return param in self.sites

    def __iter__(self):
        return iter(self.sites.values())

    # ---- summaries --------------------------------------------------------------------------
    def sparsity(self) -> float:
        """Fraction of zeros over all planned weights."""
        total = sum(s.mask.numel() for s in self.sites.values())
        kept = sum(int(s.mask.sum()) for s in self.sites.values())
        return 1.0 - kept / total if total else 0.0

    def summary(self) -> str:
        lines = [f"plan: {len(self.sites)} sites, {self.sparsity():.1%} zeros, {len(self.skipped)} skipped"]
        for s in self.sites.values():
            lines.append(
                f"  {s.param:<60} {s.pattern:<22} {s.sparsity:6.1%}" + ("  perm" if s.perm is not None else "")
            )
        for sk in self.skipped:
            lines.append(f"  skip {sk['param']}: {sk['reason']} ({sk['message']})")
        return "\n".join(lines)

    # ---- (de)serialization ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything but the tensors (JSON-ready)."""
        return {
            "format": "graphprune.plan",
            "version": PLAN_FORMAT_VERSION,
            "meta": self.meta,
            "sites": [s.meta() for s in self.sites.values()],
            "skipped": self.skipped,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for s in self.sites.values():
            out[f"{s.param}::mask"] = s.mask
            if s.perm is not None:
                out[f"{s.param}::perm"] = s.perm
            if s.values is not None:
                out[f"{s.param}::values"] = s.values
        return out

    def save(self, directory: str | Path) -> Path:
        """Write ``plan.json`` and ``tensors.safetensors`` into ``directory`` (created if needed)."""
        from safetensors.torch import save_file

        from graphprune.io.files import atomic_write, atomic_write_text

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = self.tensors()
        atomic_write(d / _TENSORS_NAME, lambda p: save_file(tensors, str(p)))
        atomic_write_text(d / _JSON_NAME, json.dumps(self.to_dict(), indent=2, default=str))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Plan:
        """Read a plan written by :meth:`save`. Tensors are read with safetensors (no pickle)."""
        from safetensors.torch import load_file

        d = Path(directory)
        jpath, tpath = d / _JSON_NAME, d / _TENSORS_NAME
        for p in (jpath, tpath):
            if not p.is_file():
                raise InputError(f"plan folder {d} has no {p.name}; a plan is saved by Plan.save(folder)")
        try:
            data = json.loads(jpath.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{jpath} is not valid JSON: {e}") from e
        if not isinstance(data, dict) or data.get("format") != "graphprune.plan":
            raise InputError(f"{jpath} is not a graphprune plan (no 'format': 'graphprune.plan')")
        if data.get("version") != PLAN_FORMAT_VERSION:
            raise InputError(
                f"{jpath} has plan format version {data.get('version')!r}; this graphprune reads {PLAN_FORMAT_VERSION}"
            )
        try:
            tensors = load_file(str(tpath))
        except Exception as e:  # safetensors raises its own error types
            raise InputError(f"{tpath} could not be read as safetensors: {e}") from e
        plan = cls(meta=dict(data.get("meta", {})), skipped=list(data.get("skipped", [])))
        for sm in data.get("sites", []):
            param = sm["param"]
            key = f"{param}::mask"
            if key not in tensors:
                raise InputError(f"{tpath} lacks the mask of plan site {param!r}")
            mask = tensors[key]
            if list(mask.shape) != list(sm["shape"]):
                raise InputError(
                    f"{tpath}: mask of {param!r} has shape {tuple(mask.shape)}, plan.json says {sm['shape']}"
                )
            plan.add(
                PlanSite(
                    param=param,
                    mask=mask,
                    k_axis=int(sm["k_axis"]),
                    pattern=str(sm.get("pattern", "")),
                    perm=tensors.get(f"{param}::perm"),
                    values=tensors.get(f"{param}::values"),
                    extra=dict(sm.get("extra", {})),
                )
            )
        return plan

    # ---- applying ---------------------------------------------------------------------------
    def check(self, model: nn.Module) -> None:
        """Raise InputError unless every site names a parameter of ``model`` with the mask's shape."""
        params = dict(model.named_parameters(remove_duplicate=False))
        # A model pruned with torch.nn.utils.prune holds "<name>_orig"; accept it under its plain name.
        # A parametrized weight (torch.nn.utils.parametrize) is "<module>.parametrizations.<name>.original".
        for name, p in list(params.items()):
            if name.endswith("_orig"):
                params.setdefault(name[: -len("_orig")], p)
            head, sep, tail = name.partition("parametrizations.")
            if sep and tail.endswith(".original"):
                params.setdefault(head + tail[: -len(".original")], p)
        missing = [s.param for s in self.sites.values() if s.param not in params]
        if missing:
            modules = sorted({n.rpartition(".")[0] for n, p in params.items() if p.dim() >= 2})
            raise InputError(
                f"the plan has masks for {len(missing)} weight(s) the model lacks: {', '.join(missing[:8])}"
                + (" ..." if len(missing) > 8 else "")
                + f". The model's weight-bearing layers are: {', '.join(modules[:20])}"
                + (f" ... ({len(modules)} in all)" if len(modules) > 20 else "")
            )
        bad = [
            f"{s.param} (plan {s.shape}, model {tuple(params[s.param].shape)})"
            for s in self.sites.values()
            if tuple(params[s.param].shape) != s.shape
        ]
        if bad:
            raise InputError(f"the plan's masks do not match the model's weight shapes: {', '.join(bad)}")

    def apply(self, model: nn.Module, *, form: Literal["folded", "masked"] = "folded") -> nn.Module:
        """Apply the plan to ``model`` in place and return it.

        ``folded``: zeros are written into the weights (and ``values`` where the plan has them).
        ``masked``: ``torch.nn.utils.prune.custom_from_mask`` — ``weight_orig`` + ``weight_mask``,
        the weight is recomputed as ``weight_orig * weight_mask`` in every forward, so training keeps
        the zeros.
        """
        if form not in ("folded", "masked"):
            raise InputError(f"Plan.apply form must be 'folded' or 'masked', got {form!r}")
        self.check(model)
        from torch.nn.utils import parametrize, prune

        modules = dict(model.named_modules())
        with torch.no_grad():
            for s in self.sites.values():
                module = modules[s.module]
                name = s.param_name
                if hasattr(module, name + "_orig"):  # already under torch.nn.utils.prune
                    target = getattr(module, name + "_orig")
                elif parametrize.is_parametrized(module, name):
                    target = module.parametrizations[name].original
                else:
                    target = getattr(module, name)
                if s.values is not None:
                    target.copy_(s.values.to(device=target.device, dtype=target.dtype))
                mask = s.mask.to(target.device)
                if form == "folded":
                    target.mul_(mask.to(target.dtype))
                    if hasattr(module, name + "_mask"):
                        getattr(module, name + "_mask").mul_(mask.to(target.dtype))
                else:
                    prune.custom_from_mask(module, name, mask.to(target.dtype))
        return model

    # ---- importing other formats ------------------------------------------------------------
    @classmethod
    def from_masks(
        cls,
        masks: Mapping[str, torch.Tensor],
        *,
        k_axes: Mapping[str, int] | None = None,
        pattern: str = "",
        meta: Mapping[str, Any] | None = None,
    ) -> Plan:
        plan = cls(meta=dict(meta or {}))
        for param, mask in masks.items():
            plan.add(PlanSite(param=param, mask=mask, k_axis=(k_axes or {}).get(param, 1), pattern=pattern))
        return plan

    @classmethod
    def from_torch_prune(cls, source: nn.Module | Mapping[str, torch.Tensor]) -> Plan:
        """Read a model (or its state_dict) pruned with ``torch.nn.utils.prune`` as a plan.

        Every ``<name>_orig`` / ``<name>_mask`` pair becomes a site ``<module>.<name>`` whose mask is
        ``<name>_mask != 0``. For a module, K comes from the module type (Linear and Conv: axis 1,
        transformers Conv1D: axis 0, ConvTranspose: axis 0); for a bare state_dict K defaults to 1.
        """
        plan = cls(meta={"source": "torch.nn.utils.prune"})
        if isinstance(source, nn.Module):
            from graphprune.analysis.module_sites import module_k_axis

            for mname, module in source.named_modules():
                for bname, buf in module.named_buffers(recurse=False):
                    if not bname.endswith("_mask"):
                        continue
                    pname = bname[: -len("_mask")]
                    if not isinstance(getattr(module, pname + "_orig", None), torch.Tensor):
                        continue
                    fqn = f"{mname}.{pname}" if mname else pname
                    k = module_k_axis(module, pname)
                    plan.add(
                        PlanSite(param=fqn, mask=buf != 0, k_axis=1 if k is None else k, pattern="torch.nn.utils.prune")
                    )
        elif isinstance(source, Mapping):
            for key, t in source.items():
                if key.endswith("_mask") and f"{key[: -len('_mask')]}_orig" in source:
                    fqn = key[: -len("_mask")]
                    plan.add(PlanSite(param=fqn, mask=t != 0, k_axis=1, pattern="torch.nn.utils.prune"))
        else:
            raise InputError(f"Plan.from_torch_prune takes a module or a state_dict, got {type(source).__name__}")
        if not plan.sites:
            raise InputError(
                "found no torch.nn.utils.prune masks (<name>_orig parameters with <name>_mask buffers) in the "
                f"given {'model' if isinstance(source, nn.Module) else 'state_dict'}"
            )
        return plan


def merge(plans: Iterable[Plan]) -> Plan:
    """One plan from several with disjoint sites (later ``meta`` keys win)."""
    out = Plan()
    for p in plans:
        for s in p.sites.values():
            out.add(s)
        out.skipped.extend(p.skipped)
        out.meta.update(p.meta)
    return out
