"""Movement pruning (Sanh et al. 2020) and L0 pruning (Louizos et al. 2018) on any site.

Each site's weight gets a parametrization ``W' = W ⊙ M(S)`` (``torch.nn.utils.parametrize``) with
learned scores ``S`` (a parameter of the parametrization, so the optimizer trains it):

- ``method="hard"``: ``M`` keeps the top ``(1 − sparsity)`` of ``S`` (per layer). Straight-through
  estimator: forward uses the binary mask, backward passes ``∂L/∂M = ∂L/∂W' ⊙ W`` to ``S`` unchanged,
  so ``S`` accumulates ``−W·∂L/∂W`` (the weight's movement away from zero). ``sparsity`` may follow a
  schedule (``pruner.step(step)``).
- ``method="soft"``: ``M = 1[σ(S) > τ]`` (straight-through); :meth:`MovementPruner.regularization`
  returns ``λ · mean σ(S)`` (an L1 penalty on the positive ``σ(S)``) that pushes scores down, so the
  sparsity is set by ``λ`` rather than by a target.
- ``method="l0"``: hard-concrete gates (``l = −0.1``, ``r = 1.1``, ``β = 2/3``): in training
  ``u ~ U(0,1)``, ``s = σ((log u − log(1−u) + S)/β)``, ``z = clamp(s(r − l) + l, 0, 1)``; in eval
  ``z = clamp(σ(S)(r − l) + l, 0, 1)``; the penalty is ``λ · mean σ(S − β log(−l/r))``, the expected
  fraction of non-zero gates. Freezing folds ``z`` into the weights.

Granularity: ``"unstructured"``; ``SemiStructured(n, m)`` — learned N:M, the top ``n`` scores of every
``m`` along K (hard method only); ``Groups(axis="out" | "in", size=g)`` — one score per group of ``g``
consecutive output rows (or input columns): rows/FFN neurons with ``size=1``, attention heads with
``size=head_dim``. ``share={fqn: key}`` makes sites with the same key share one score vector (e.g. the
q, k, v rows and the o-projection columns of one attention's heads, or an FFN's up rows and down
columns), so coupled layers lose the same heads / neurons.

Scores get their own learning rate: build the optimizer from :meth:`MovementPruner.param_groups`.
Create the pruner before wrapping the model in DistributedDataParallel (the scores are parameters
that DDP must see; they then stay identical on every rank like any other parameter).
:meth:`MovementPruner.to_plan` freezes the current binary masks into a :class:`~graphprune.plan.Plan`;
:meth:`MovementPruner.remove` removes the parametrizations and bakes ``W ⊙ M`` into plain weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from graphprune.analysis.module_sites import DEFAULT_WHITELIST, SiteEntry, find_prunable_sites, unwrap
from graphprune.config import SemiStructured
from graphprune.errors import ConfigError, InputError
from graphprune.plan import Plan, PlanSite
from graphprune.training.asp import PruningOrderError
from graphprune.training.schedules import Cubic, Iterative, OneShot

__all__ = ["Groups", "MovementPruner", "hard_concrete_params"]

Method = Literal["hard", "soft", "l0"]
L0_LEFT, L0_RIGHT, L0_BETA = -0.1, 1.1, 2.0 / 3.0


def hard_concrete_params() -> tuple[float, float, float]:
    """``(l, r, β)`` of the hard-concrete distribution used by ``method="l0"``."""
    return L0_LEFT, L0_RIGHT, L0_BETA


@dataclass(frozen=True, kw_only=True)
class Groups:
    """Structured granularity: one score per ``size`` consecutive outputs (``axis="out"``) or inputs."""

    axis: Literal["out", "in"] = "out"
    size: int = 1

    def __post_init__(self) -> None:
        if self.axis not in ("out", "in"):
            raise ConfigError(f"Groups.axis must be 'out' or 'in', got {self.axis!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"Groups.size must be an int >= 1, got {self.size!r}")


Granularity = Literal["unstructured"] | SemiStructured | Groups


class _STE(torch.autograd.Function):
    """Binary mask in forward, identity gradient to the scores in backward."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask.to(scores.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def _topk_keep(scores: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    flat = scores.detach().reshape(-1)
    k = min(flat.numel(), max(0, round(keep_fraction * flat.numel())))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k:
        mask[flat.topk(k, sorted=False).indices] = True
    return mask.reshape(scores.shape)


class _ScoreMask(nn.Module):
    """The parametrization ``W -> W ⊙ M(S)`` of one site."""

    def __init__(
        self,
        scores: nn.Parameter,
        *,
        method: Method,
        granularity: Granularity,
        weight_shape: torch.Size,
        k_axis: int,
        tau: float,
    ) -> None:
        super().__init__()
        self.scores = scores
        self.method = method
        self.granularity = granularity
        self.weight_shape = tuple(weight_shape)
        self.k_axis = k_axis
        self.tau = tau
        self.keep_fraction = 1.0
        self.frozen: torch.Tensor | None = None  # a fixed binary mask once frozen

    # ---- masks ---------------------------------------------------------------------------------
    def _expand(self, m: torch.Tensor) -> torch.Tensor:
        """Group scores/mask ``[G]`` -> broadcastable to the weight."""
        g = self.granularity
        if not isinstance(g, Groups):
            return m
        out_axis = 0 if self.k_axis != 0 else 1
        axis = out_axis if g.axis == "out" else self.k_axis
        full = m.repeat_interleave(g.size)
        shape = [1] * len(self.weight_shape)
        shape[axis] = self.weight_shape[axis]
        return full.reshape(shape)

    def binary(self) -> torch.Tensor:
        """The deterministic binary keep-mask in score space (``[G]`` for groups)."""
        s = self.scores.detach()
        if self.method == "hard":
            g = self.granularity
            if isinstance(g, SemiStructured):
                from graphprune.sparsity._common import as_rows_by_k, from_rows_by_k
                from graphprune.sparsity.semi_structured import topn_mask

                rows = as_rows_by_k(s, self.k_axis)
                keep = topn_mask(rows.reshape(-1, g.m), g.n).reshape(rows.shape)
                return from_rows_by_k(keep, s.shape, self.k_axis)
            return _topk_keep(s, self.keep_fraction)
        if self.method == "soft":
            return torch.sigmoid(s) > self.tau
        return self.l0_gate(deterministic=True) > 0

    def l0_gate(self, deterministic: bool) -> torch.Tensor:
        s = self.scores
        if deterministic:
            x = torch.sigmoid(s)
        else:
            u = torch.rand_like(s).clamp(1e-6, 1 - 1e-6)
            x = torch.sigmoid((torch.log(u) - torch.log1p(-u) + s) / L0_BETA)
        return (x * (L0_RIGHT - L0_LEFT) + L0_LEFT).clamp(0.0, 1.0)

    def mask(self) -> torch.Tensor:
        if self.frozen is not None:
            return self._expand(self.frozen.to(self.scores.dtype))
        if self.method == "l0":
            return self._expand(self.l0_gate(deterministic=not self.training))
        return self._expand(_STE.apply(self.scores, self.binary()))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask().to(weight.dtype)


def _init_scores(shape: tuple[int, ...], method: Method, init: float | None, weight: torch.Tensor) -> torch.Tensor:
    if init is None:
        init = {"hard": 0.0, "soft": 1.0, "l0": math.log(0.95 / 0.05)}[method]
    return torch.full(shape, float(init), dtype=torch.float32, device=weight.device)


class MovementPruner:
    """Learned-score pruning of every site; see the module docstring.

    Args:
        model: the model; its sites come from :func:`find_prunable_sites` (or ``sites``).
        method: ``"hard"`` (top-v with STE), ``"soft"`` (threshold ``tau`` + L1 on ``σ(S)``), ``"l0"``.
        granularity: ``"unstructured"``, ``SemiStructured(n, m)`` (hard only) or ``Groups(...)``.
        sparsity: target for ``"hard"``: a float, or a schedule (``Cubic``...) followed by :meth:`step`.
        tau: threshold on ``σ(S)`` for ``"soft"``.
        lam: weight of the penalty returned by :meth:`regularization` (soft, l0).
        score_init: initial score (default 0 for hard, 1 for soft, log(0.95/0.05) for l0: gates open).
        share: ``{site fqn: key}``; sites with one key share one score tensor (needs equal shapes).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        method: Method = "hard",
        granularity: Granularity = "unstructured",
        sparsity: float | OneShot | Iterative | Cubic = 0.0,
        tau: float = 0.5,
        lam: float = 0.0,
        score_init: float | None = None,
        sites: Sequence[SiteEntry] | None = None,
        whitelist: Sequence[Any] = DEFAULT_WHITELIST,
        allowed_layer_names: Sequence[str] | None = None,
        disallowed_layer_names: Sequence[str] = (),
        share: Mapping[str, str] | None = None,
    ) -> None:
        if method not in ("hard", "soft", "l0"):
            raise ConfigError(f"MovementPruner.method must be 'hard', 'soft' or 'l0', got {method!r}")
        if not (granularity == "unstructured" or isinstance(granularity, (SemiStructured, Groups))):
            raise ConfigError(
                f"MovementPruner.granularity must be 'unstructured', SemiStructured(n, m) or Groups(...), got {granularity!r}"
            )
        if isinstance(granularity, SemiStructured):
            if method != "hard":
                raise ConfigError(
                    "learned N:M (granularity=SemiStructured) needs method='hard' (top-n of every m scores)"
                )
            if granularity.method != "1d":
                raise ConfigError("learned N:M supports 1-D N:M only")
        if not 0.0 < tau < 1.0:
            raise ConfigError(f"MovementPruner.tau must be in (0, 1) (a threshold on sigmoid(scores)), got {tau!r}")
        if lam < 0:
            raise ConfigError(f"MovementPruner.lam must be >= 0, got {lam!r}")
        self.schedule: OneShot | Iterative | Cubic | None = None
        if isinstance(sparsity, (OneShot, Iterative, Cubic)):
            self.schedule = sparsity
            target = 0.0
        else:
            if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
                raise ConfigError(f"MovementPruner.sparsity must be in [0, 1) or a schedule, got {sparsity!r}")
            target = float(sparsity)
        if method != "hard" and (self.schedule is not None or target):
            raise ConfigError(
                f"method={method!r} sets sparsity through lam (the penalty), not sparsity=; use method='hard'"
            )
        model = unwrap(model)
        self.model = model
        self.method: Method = method
        self.granularity = granularity
        self.lam = float(lam)
        if sites is None:
            sites = find_prunable_sites(
                model,
                whitelist=whitelist,
                allowed_layer_names=allowed_layer_names,
                disallowed_layer_names=disallowed_layer_names,
            )
        self.sites: list[SiteEntry] = list(sites)
        self.masks: dict[str, _ScoreMask] = {}
        shared: dict[str, nn.Parameter] = {}
        share = dict(share or {})
        unknown = [k for k in share if k not in {e.fqn for e in self.sites}]
        if unknown:
            raise InputError(f"share names weights that are not sites: {', '.join(unknown)}")
        for e in self.sites:
            w = e.param
            shape = self._score_shape(e, w)
            key = share.get(e.fqn)
            if key is not None and key in shared:
                scores = shared[key]
                if tuple(scores.shape) != shape:
                    raise ConfigError(
                        f"share key {key!r}: {e.fqn} needs scores of shape {shape}, the shared scores have {tuple(scores.shape)}"
                    )
            else:
                scores = nn.Parameter(_init_scores(shape, method, score_init, w))
                if key is not None:
                    shared[key] = scores
            pm = _ScoreMask(
                scores, method=method, granularity=granularity, weight_shape=w.shape, k_axis=e.k_axis, tau=tau
            )
            parametrize.register_parametrization(e.module, e.param_name, pm)
            self.masks[e.fqn] = pm
        self.set_sparsity(target)

    def _score_shape(self, e: SiteEntry, w: torch.Tensor) -> tuple[int, ...]:
        g = self.granularity
        if isinstance(g, Groups):
            out_axis = 0 if e.k_axis != 0 else 1
            axis = out_axis if g.axis == "out" else e.k_axis
            if w.shape[axis] % g.size:
                raise ConfigError(
                    f"{e.fqn}: axis {axis} has {w.shape[axis]} entries, not divisible by Groups.size={g.size}"
                )
            return (w.shape[axis] // g.size,)
        if isinstance(g, SemiStructured) and w.shape[e.k_axis] % g.m:
            raise ConfigError(
                f"{e.fqn}: K={w.shape[e.k_axis]} (axis {e.k_axis}) is not divisible by M={g.m}; exclude it"
            )
        return tuple(w.shape)

    # ---- training ------------------------------------------------------------------------------
    def score_parameters(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for pm in self.masks.values():
            seen.setdefault(id(pm.scores), pm.scores)
        return list(seen.values())

    def param_groups(
        self, *, lr: float, score_lr: float, weight_decay: float = 0.0, params: Iterable[nn.Parameter] | None = None
    ) -> list[dict[str, Any]]:
        """Optimizer param groups: the model's parameters at ``lr`` and the scores at ``score_lr``
        (no weight decay on scores)."""
        score_ids = {id(p) for p in self.score_parameters()}
        others = [p for p in (params if params is not None else self.model.parameters()) if id(p) not in score_ids]
        return [
            {"params": others, "lr": lr, "weight_decay": weight_decay},
            {"params": self.score_parameters(), "lr": score_lr, "weight_decay": 0.0},
        ]

    def set_sparsity(self, sparsity: float) -> None:
        if not 0 <= sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1), got {sparsity!r}")
        self.current = float(sparsity)
        for pm in self.masks.values():
            pm.keep_fraction = 1.0 - self.current

    def step(self, step: int) -> float:
        """Follow the schedule (hard method); returns the target sparsity."""
        if self.schedule is not None:
            self.set_sparsity(self.schedule.sparsity_at(step))
        return self.current

    def on_step_begin(self, step: int) -> None:
        self.step(step)

    def on_loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        return loss + self.regularization() if self.lam else loss

    def regularization(self) -> torch.Tensor:
        """``λ · mean σ(S)`` (soft) or ``λ · mean P(z ≠ 0)`` (l0) over all scores; 0 for hard."""
        params = self.score_parameters()
        if self.method == "hard" or not self.lam or not params:
            return torch.zeros((), device=params[0].device if params else None)
        total = sum(p.numel() for p in params)
        shift = 0.0 if self.method == "soft" else L0_BETA * math.log(-L0_LEFT / L0_RIGHT)
        acc = torch.stack([torch.sigmoid(p - shift).sum() for p in params]).sum()
        return self.lam * acc / total

    # ---- results -------------------------------------------------------------------------------
    @torch.no_grad()
    def current_masks(self) -> dict[str, torch.Tensor]:
        """fqn -> deterministic boolean keep-mask of the weight's shape."""
        out = {}
        for e in self.sites:
            pm = self.masks[e.fqn]
            m = pm.frozen if pm.frozen is not None else pm.binary()
            out[e.fqn] = pm._expand(m).expand(pm.weight_shape).clone()
        return out

    def sparsity(self) -> float:
        masks = self.current_masks()
        total = sum(m.numel() for m in masks.values())
        return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0

    @torch.no_grad()
    def _effective_weight(self, e: SiteEntry) -> torch.Tensor:
        pm = self.masks[e.fqn]
        w = e.module.parametrizations[e.param_name].original  # type: ignore[index]
        if self.method == "l0" and pm.frozen is None:
            return w * pm._expand(pm.l0_gate(deterministic=True)).to(w.dtype)
        m = pm.frozen if pm.frozen is not None else pm.binary()
        return w * pm._expand(m).to(w.dtype)

    def to_plan(self) -> Plan:
        """Freeze the current deterministic masks into a plan (L0: the gates are folded into ``values``)."""
        if not self.masks:
            raise PruningOrderError("to_plan() after remove(): the pruner holds no sites")
        plan = Plan(
            meta={"source": "graphprune.training.movement", "method": self.method, "granularity": str(self.granularity)}
        )
        masks = self.current_masks()
        for e in self.sites:
            values = self._effective_weight(e) if self.method == "l0" else None
            plan.add(
                PlanSite(
                    param=e.fqn,
                    mask=masks[e.fqn],
                    k_axis=e.k_axis,
                    pattern=f"movement-{self.method}:{self.granularity}",
                    values=values,
                )
            )
        return plan

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix the masks at their current binary values (scores stop mattering; L0 gates stay as eval gates)."""
        for pm in self.masks.values():
            if self.method != "l0":
                pm.frozen = pm.binary()

    @torch.no_grad()
    def remove(self) -> None:
        """Remove the parametrizations, leaving plain weights ``W ⊙ M`` (pruned entries exactly zero)."""
        for e in self.sites:
            w = self._effective_weight(e).clone()
            parametrize.remove_parametrizations(e.module, e.param_name, leave_parametrized=False)
            getattr(e.module, e.param_name).copy_(w)
        self.masks.clear()
