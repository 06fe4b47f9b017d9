"""The :class:`ASP` object: N:M (or other) masks for one model, kept through retraining.

:mod:`graphprune.training.asp` is the public entry point (usage there, with the ASP-style module
functions); this module holds the class and the per-model registry those functions read.

Invariants
----------
- Masks are registered buffers ``<param>_sparsity_mask`` (bool, ``True`` = keep) on the owning
  module, so they are in ``model.state_dict()`` and come back with ``load_state_dict``.
- After :meth:`ASP.init_optimizer_for_pruning` the optimizer's step masks the gradients of pruned
  weights before it runs and multiplies the weights by their masks after it runs (optimizer step pre-
  and post-hooks on the innermost ``torch.optim.Optimizer``). Pruned weights therefore stay exactly
  zero whatever the update rule does with them: momentum, Adam moments, decoupled weight decay.
- Under ``torch.distributed`` masks are broadcast from rank 0 after they are computed, so every rank
  holds identical masks even if the ranks' weights differ by rounding.

Sites are found by :func:`graphprune.analysis.module_sites.find_prunable_sites`, a walk over modules with a
type whitelist and allowed/disallowed names; it is the one place to swap for the graph-based finder.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from graphprune.analysis.module_sites import DEFAULT_WHITELIST, SiteEntry, find_prunable_sites, unwrap
from graphprune.errors import ConfigError, GraphPruneError, InputError, WeightError
from graphprune.plan import Plan, PlanSite
from graphprune.training.mask_calculators import MaskCalculatorSpec, _Calculator, resolve_mask_calculator

# logged as graphprune.training.asp, the module users import ASP from (and set log levels for)
log = logging.getLogger("graphprune.training.asp")

MASK_SUFFIX = "_sparsity_mask"
PERM_SUFFIX = "_sparsity_perm"


class PruningOrderError(GraphPruneError, RuntimeError):
    """A pruning step was called before the step it depends on (or twice)."""

    exit_code = 2


# --------------------------------------------------------------------------- the ASP object


@dataclass
class _MaskedSite:
    entry: SiteEntry
    mask: torch.Tensor  # the registered buffer (bool)
    pruned_values: torch.Tensor | None = None  # kept on CPU when allow_recompute_mask
    skipped: str | None = None  # why the last compute left this site dense

    @property
    def fqn(self) -> str:
        return self.entry.fqn


def _innermost_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """Unwrap optimizer wrappers (accelerate's AcceleratedOptimizer, ...) down to torch's optimizer."""
    opt = optimizer
    for _ in range(8):
        inner = getattr(opt, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer):
            opt = inner
        else:
            break
    if not isinstance(opt, torch.optim.Optimizer):
        raise ConfigError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return opt


class ASP:
    """Sparse masks for one model; see the module docstring.

    Args:
        model: the model (a DDP wrapper is unwrapped; site names are those of the inner module).
        mask_calculator: ``"m4n2_1d"`` (default), ``"m4n2_2d_greedy"``, ``"m4n2_2d_best"``, a
            ``SemiStructured`` / ``Unstructured`` config, or ``fn(weight, k_axis) -> bool mask``.
        whitelist, allowed_layer_names, disallowed_layer_names, custom_layer_dict: see
            :func:`find_prunable_sites`.
        example_inputs: find the weights in the captured graph instead of by module type, as
            ``graphprune.compile`` does (functional ``x @ W`` weights too, with their own K axis).
        allow_recompute_mask: keep the pruned values (on CPU) so that masks can be recomputed from
            the dense weights and :meth:`restore_pruned_weights` can undo pruning.
        allow_permutation: search a permutation of each weight's K axis (``search_permutation``)
            that keeps more magnitude under N:M; the mask is computed in permuted space and stored in
            the model's layout (so it is N:M only after the permutation; see ``graphprune.plan``). The
            permutation is a ``<param>_sparsity_perm`` buffer and goes into the plan.
        permutation_time_budget_s: time budget of the search, per layer.
    """

    def __init__(
        self,
        model: nn.Module,
        mask_calculator: MaskCalculatorSpec = "m4n2_1d",
        *,
        whitelist: Sequence[Any] = DEFAULT_WHITELIST,
        allowed_layer_names: Sequence[str] | None = None,
        disallowed_layer_names: Sequence[str] = (),
        custom_layer_dict: Mapping[type, int] | None = None,
        example_inputs: Any = None,
        allow_recompute_mask: bool = False,
        allow_permutation: bool = False,
        permutation_time_budget_s: float = 1.0,
        verbosity: int = 2,
    ) -> None:
        model = unwrap(model)
        # A weak reference: the per-model registry below is a WeakKeyDictionary whose values must not keep
        # their keys alive.
        self._model_ref = weakref.ref(model)
        self.calculator = resolve_mask_calculator(mask_calculator)
        self.allow_recompute_mask = bool(allow_recompute_mask)
        self.allow_permutation = bool(allow_permutation)
        self.permutation_time_budget_s = float(permutation_time_budget_s)
        self.verbosity = verbosity
        if self.allow_permutation and self.calculator.m is None:
            raise ConfigError(
                f"allow_permutation=True needs an N:M mask_calculator (e.g. 'm4n2_1d'), got {self.calculator.name!r}"
            )
        entries = find_prunable_sites(
            model,
            whitelist=whitelist,
            allowed_layer_names=allowed_layer_names,
            disallowed_layer_names=disallowed_layer_names,
            custom_layer_dict=custom_layer_dict,
            example_inputs=example_inputs,
        )
        self.sites: list[_MaskedSite] = []
        for e in entries:  # check every site before touching any
            if hasattr(e.module, e.param_name + MASK_SUFFIX):
                raise PruningOrderError(
                    f"layer {e.name!r} already has a sparsity mask: the model was initialized for pruning "
                    "before; use that ASP object (asp_for(model)) or build a fresh model"
                )
        for e in entries:
            bname = e.param_name + MASK_SUFFIX
            e.module.register_buffer(bname, torch.ones_like(e.param, dtype=torch.bool), persistent=True)
            if self.allow_permutation:
                k = e.param.shape[e.k_axis]
                e.module.register_buffer(
                    e.param_name + PERM_SUFFIX, torch.arange(k, device=e.param.device), persistent=True
                )
            self.sites.append(_MaskedSite(entry=e, mask=getattr(e.module, bname)))
        self._hooks: list[Any] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._computed = False
        if verbosity >= 2:
            log.info("ASP: %d prunable weights in %s (%s)", len(self.sites), type(model).__name__, self.calculator.name)
        _INSTANCES[model] = self

    @property
    def model(self) -> nn.Module:
        model = self._model_ref()
        if model is None:
            raise PruningOrderError("the model of this ASP object no longer exists")
        return model

    # ---- optimizer ------------------------------------------------------------------------------
    def init_optimizer_for_pruning(self, optimizer: Any) -> None:
        """Make ``optimizer.step()`` keep pruned weights at zero (grads masked before, weights after)."""
        if self._optimizer is not None:
            raise PruningOrderError("init_optimizer_for_pruning was already called for this model")
        opt = _innermost_optimizer(optimizer)
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        missing = [s.fqn for s in self.sites if id(s.entry.param) not in held]
        if missing:
            what = (
                "none" if len(missing) == len(self.sites) else f"{len(self.sites) - len(missing)} of {len(self.sites)}"
            )
            raise ConfigError(
                f"the optimizer does not hold the model's parameters: it holds {what} of the prunable weights "
                f"of {type(self.model).__name__}; missing: {', '.join(missing[:6])}"
                + (" ..." if len(missing) > 6 else "")
                + ". Build the optimizer from this model's parameters (after any .to(device))"
            )
        self._hooks.append(opt.register_step_pre_hook(lambda *_: self._mask_grads()))
        self._hooks.append(opt.register_step_post_hook(lambda *_: self.apply_masks()))
        self._optimizer = opt

    @torch.no_grad()
    def _mask_grads(self) -> None:
        if not self._computed:
            return
        for s in self.sites:
            g = s.entry.param.grad
            if g is not None:
                g.mul_(s.mask)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Multiply every weight by its mask (the optimizer's post-step hook does this)."""
        if not self._computed:
            return
        for s in self.sites:
            s.entry.param.mul_(s.mask)

    # ---- masks ----------------------------------------------------------------------------------
    @torch.no_grad()
    def compute_sparse_masks(self, mask_calculator: MaskCalculatorSpec | None = None) -> None:
        """Compute masks from the current weights and zero the pruned weights.

        With ``allow_recompute_mask`` the previously pruned values are restored first, so masks are
        recomputed from the dense weights. Under ``torch.distributed`` the masks are broadcast from
        rank 0 before they are applied.
        """
        calc = self.calculator if mask_calculator is None else resolve_mask_calculator(mask_calculator)
        if self.allow_permutation and calc.m is None:
            raise ConfigError(f"allow_permutation=True needs an N:M mask_calculator, got {calc.name!r}")
        for s in self.sites:
            w = s.entry.param
            if self.allow_recompute_mask and s.pruned_values is not None:
                w.add_(s.pruned_values.to(w.device, w.dtype))
                s.pruned_values = None
            k = s.entry.k_axis
            s.skipped = None
            if calc.m is not None and w.shape[k] % calc.m:
                s.skipped = f"K={w.shape[k]} (axis {k}) is not divisible by M={calc.m}"
                s.mask.fill_(True)
                if self.verbosity >= 2:
                    log.info("ASP: leaving %s dense: %s", s.fqn, s.skipped)
                continue
            try:
                mask = self._permuted_mask(s, calc) if self.allow_permutation else calc.fn(w.detach(), k)
            except WeightError as e:  # e.g. 2-D N:M on a weight whose other axis is not divisible by M
                s.skipped = str(e)
                s.mask.fill_(True)
                log.info("ASP: leaving %s dense: %s", s.fqn, e)
                continue
            if not isinstance(mask, torch.Tensor) or mask.shape != w.shape:
                raise ConfigError(
                    f"mask calculator {calc.name!r} returned {getattr(mask, 'shape', type(mask).__name__)} "
                    f"for {s.fqn} of shape {tuple(w.shape)}"
                )
            s.mask.copy_(mask.to(device=s.mask.device, dtype=torch.bool))
        self._broadcast()
        for s in self.sites:
            w = s.entry.param
            if self.allow_recompute_mask:
                s.pruned_values = (w * ~s.mask).detach().to("cpu", copy=True)
            w.mul_(s.mask)
        self._computed = True
        self.calculator_used = calc

    def _permuted_mask(self, s: _MaskedSite, calc: _Calculator) -> torch.Tensor:
        from graphprune.sparsity.permutation import search_permutation

        w, k = s.entry.param.detach(), s.entry.k_axis
        assert calc.n is not None and calc.m is not None  # checked by the caller
        result = search_permutation(w, calc.n, calc.m, axis=k, time_budget_s=self.permutation_time_budget_s)
        perm = torch.as_tensor(result.perm, dtype=torch.long, device=w.device)
        mask_p = calc.fn(w.index_select(k, perm), k)
        getattr(s.entry.module, s.entry.param_name + PERM_SUFFIX).copy_(perm)
        return mask_p.index_select(k, torch.argsort(perm))

    def _broadcast(self) -> None:
        from graphprune.training.ddp import broadcast_tensors, is_distributed

        if not is_distributed():
            return
        tensors = [s.mask for s in self.sites]
        if self.allow_permutation:
            tensors += [getattr(s.entry.module, s.entry.param_name + PERM_SUFFIX) for s in self.sites]
        broadcast_tensors(tensors, src=0)

    @torch.no_grad()
    def restore_pruned_weights(self) -> None:
        """Put the pruned values back and clear the masks (needs ``allow_recompute_mask=True``)."""
        if not self._computed:
            raise PruningOrderError("restore_pruned_weights() called before compute_sparse_masks()")
        if not self.allow_recompute_mask:
            raise ConfigError(
                "restore_pruned_weights() needs the pruned values, which are kept only with "
                "allow_recompute_mask=True at init_model_for_pruning"
            )
        for s in self.sites:
            if s.pruned_values is not None:
                s.entry.param.add_(s.pruned_values.to(s.entry.param.device, s.entry.param.dtype))
                s.pruned_values = None
            s.mask.fill_(True)
        self._computed = False

    @torch.no_grad()
    def set_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Install masks computed elsewhere (keyed by parameter fqn), broadcast them, zero the weights.

        Sites absent from ``masks`` keep their current mask. Pruned values are not kept for
        :meth:`restore_pruned_weights` (use :meth:`compute_sparse_masks` for that).
        """
        by_fqn = {s.fqn: s for s in self.sites}
        unknown = [k for k in masks if k not in by_fqn]
        if unknown:
            raise InputError(
                f"masks given for weight(s) that are not sites of this model: {', '.join(unknown[:8])}; "
                f"sites are: {', '.join(list(by_fqn)[:12])}"
            )
        for fqn, m in masks.items():
            s = by_fqn[fqn]
            if tuple(m.shape) != tuple(s.mask.shape):
                raise InputError(f"mask for {fqn} has shape {tuple(m.shape)}, the weight has {tuple(s.mask.shape)}")
            s.mask.copy_(m.to(device=s.mask.device, dtype=torch.bool))
            s.skipped = None
            s.pruned_values = None
        self._broadcast()
        self._computed = True
        self.apply_masks()

    def is_sparsity_enabled(self) -> bool:
        return self._computed

    def masks(self) -> dict[str, torch.Tensor]:
        """Parameter fqn -> mask buffer (the live tensors)."""
        return {s.fqn: s.mask for s in self.sites}

    # ---- checkpoints and plans ------------------------------------------------------------------
    @staticmethod
    def _strip_ddp_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """A checkpoint saved from a DistributedDataParallel wrapper has every key under ``module.``."""
        keys = list(state_dict)
        if keys and all(k.startswith("module.") for k in keys):
            return {k[len("module.") :]: v for k, v in state_dict.items()}
        return dict(state_dict)

    def check_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Raise InputError if ``state_dict`` carries masks for layers that are not sites of this ASP."""
        own = {s.fqn + MASK_SUFFIX for s in self.sites}
        foreign = [k for k in self._strip_ddp_prefix(state_dict) if k.endswith(MASK_SUFFIX) and k not in own]
        if foreign:
            raise InputError(
                f"the checkpoint has sparsity masks for {len(foreign)} layer(s) this model lacks or does not prune: "
                f"{', '.join(k[: -len(MASK_SUFFIX)] for k in foreign[:8])}"
                + (" ..." if len(foreign) > 8 else "")
                + f". This model's pruned weights are: {', '.join(s.fqn for s in self.sites[:12])}"
                + (" ..." if len(self.sites) > 12 else "")
            )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Load a checkpoint (weights and masks; a DDP ``module.`` prefix is removed) after checking its masks."""
        self.check_state_dict(state_dict)
        self.model.load_state_dict(self._strip_ddp_prefix(state_dict), strict=strict)
        self._computed = any(not bool(s.mask.all()) for s in self.sites)

    def to_plan(self) -> Plan:
        """The current masks as a :class:`~graphprune.plan.Plan` (sites left dense are listed as skipped)."""
        if not self._computed:
            raise PruningOrderError(
                "to_plan() called before compute_sparse_masks() (or after restore_pruned_weights())"
            )
        calc = getattr(self, "calculator_used", self.calculator)
        plan = Plan(meta={"source": "graphprune.training.asp", "mask_calculator": calc.name})
        for s in self.sites:
            if s.skipped:
                plan.skip(s.fqn, "k_not_divisible" if "divisible" in s.skipped else "unsupported", s.skipped)
                continue
            perm = getattr(s.entry.module, s.entry.param_name + PERM_SUFFIX) if self.allow_permutation else None
            plan.add(PlanSite(param=s.fqn, mask=s.mask, k_axis=s.entry.k_axis, pattern=calc.name, perm=perm))
        return plan

    @torch.no_grad()
    def load_plan(self, plan: Plan) -> None:
        """Take masks (and permutations) from ``plan``; every plan site must be a site of this ASP."""
        by_fqn = {s.fqn: s for s in self.sites}
        foreign = [p for p in plan.sites if p not in by_fqn]
        if foreign:
            raise InputError(
                f"the plan has masks for layer(s) this model lacks or does not prune: {', '.join(foreign[:8])}. "
                f"This model's pruned weights are: {', '.join(list(by_fqn)[:12])}"
            )
        for ps in plan.sites.values():
            s = by_fqn[ps.param]
            if ps.shape != tuple(s.mask.shape):
                raise InputError(f"plan mask for {ps.param} has shape {ps.shape}, the weight has {tuple(s.mask.shape)}")
            s.mask.copy_(ps.mask)
            if ps.values is not None:
                s.entry.param.copy_(ps.values.to(s.entry.param.device, s.entry.param.dtype))
            if ps.perm is not None and self.allow_permutation:
                getattr(s.entry.module, s.entry.param_name + PERM_SUFFIX).copy_(ps.perm)
        self._computed = True
        self.apply_masks()

    def remove(self) -> None:
        """Detach from the optimizer and delete the mask buffers (weights keep their zeros)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._optimizer = None
        for s in self.sites:
            for suffix in (MASK_SUFFIX, PERM_SUFFIX):
                name = s.entry.param_name + suffix
                if name in s.entry.module._buffers:
                    del s.entry.module._buffers[name]
        self.sites = []
        self._computed = False
        model = self._model_ref()
        if model is not None:
            _INSTANCES.pop(model, None)


# model -> its ASP, read by the ASP-style functions of graphprune.training.asp (weak: keeps no model alive)
_INSTANCES: weakref.WeakKeyDictionary[nn.Module, ASP] = weakref.WeakKeyDictionary()
