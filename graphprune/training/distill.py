"""Distillation losses for recovering a pruned student from its dense teacher.

- :func:`kd_logits_loss`: ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` (Hinton et al.), batch-mean.
  The T² factor keeps gradient magnitudes comparable across temperatures.
- :func:`hidden_mse_loss`, :func:`hidden_cosine_loss`: per-token MSE or ``1 − cos`` between
  hidden states, averaged over the non-padding tokens given by ``attention_mask``.
- :func:`mean_pool`: attention-masked mean over tokens (sentence embeddings).
- :class:`DistillationLoss`: a weighted sum of the above over (student, teacher) outputs, where an
  output is a tensor of logits or an object/dict with ``logits`` and/or ``hidden_states``.

Teachers run under ``torch.no_grad()``; the functions detach the teacher side anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from graphprune.errors import ConfigError, InputError

__all__ = ["DistillationLoss", "hidden_cosine_loss", "hidden_mse_loss", "kd_logits_loss", "mean_pool"]


def _check_same(name: str, s: torch.Tensor, t: torch.Tensor) -> None:
    if s.shape != t.shape:
        raise InputError(f"{name}: student shape {tuple(s.shape)} differs from teacher shape {tuple(t.shape)}")


def kd_logits_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """``T² · KL(p_t ‖ p_s)`` over the last axis, averaged over every other position."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    _check_same("kd_logits_loss", student_logits, teacher_logits)
    s = student_logits.reshape(-1, student_logits.shape[-1]).float() / temperature
    t = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1]).float() / temperature
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)
    return kl * temperature**2


def _token_weights(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    if attention_mask.shape != hidden.shape[:-1]:
        raise InputError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match hidden states {tuple(hidden.shape[:-1])}"
        )
    return attention_mask.to(hidden.dtype)


def hidden_mse_loss(
    student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error per element, over non-padding tokens."""
    _check_same("hidden_mse_loss", student, teacher)
    diff = (student.float() - teacher.detach().float()).square().mean(-1)
    w = _token_weights(diff.unsqueeze(-1), attention_mask)
    if w is None:
        return diff.mean()
    return (diff * w).sum() / w.sum().clamp_min(1.0)


def hidden_cosine_loss(
    student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``1 − cos(student, teacher)`` per token, over non-padding tokens."""
    _check_same("hidden_cosine_loss", student, teacher)
    d = 1.0 - F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)
    w = _token_weights(d.unsqueeze(-1), attention_mask)
    if w is None:
        return d.mean()
    return (d * w).sum() / w.sum().clamp_min(1.0)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention-masked mean over the token axis: ``[B, L, D] -> [B, D]``."""
    if attention_mask is None:
        return hidden.mean(1)
    w = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * w).sum(1) / w.sum(1).clamp_min(1e-9)


def _get(out: Any, key: str) -> Any:
    if isinstance(out, dict):
        return out.get(key)
    return getattr(out, key, None)


@dataclass(frozen=True, kw_only=True)
class DistillationLoss:
    """Weighted distillation loss. ``layers`` selects hidden states (indices into ``hidden_states``;
    default: all); ``hidden`` picks MSE or cosine. A weight of 0 turns a term off."""

    logits_weight: float = 1.0
    temperature: float = 2.0
    hidden_weight: float = 0.0
    hidden: Literal["mse", "cosine"] = "mse"
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"DistillationLoss.temperature must be > 0, got {self.temperature!r}")
        if self.hidden not in ("mse", "cosine"):
            raise ConfigError(f"DistillationLoss.hidden must be 'mse' or 'cosine', got {self.hidden!r}")
        if self.logits_weight < 0 or self.hidden_weight < 0:
            raise ConfigError("DistillationLoss weights must be >= 0")

    def __call__(self, student: Any, teacher: Any, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        terms: list[torch.Tensor] = []
        if self.logits_weight:
            s = student if isinstance(student, torch.Tensor) else _get(student, "logits")
            t = teacher if isinstance(teacher, torch.Tensor) else _get(teacher, "logits")
            if s is None or t is None:
                raise InputError("DistillationLoss: logits_weight > 0 but the outputs carry no logits")
            terms.append(self.logits_weight * kd_logits_loss(s, t, self.temperature))
        if self.hidden_weight:
            hs: Sequence[torch.Tensor] | None = _get(student, "hidden_states")
            ht: Sequence[torch.Tensor] | None = _get(teacher, "hidden_states")
            if hs is None or ht is None:
                raise InputError(
                    "DistillationLoss: hidden_weight > 0 but the outputs carry no hidden_states "
                    "(call the model with output_hidden_states=True)"
                )
            if len(hs) != len(ht):
                raise InputError(f"student has {len(hs)} hidden states, teacher {len(ht)}")
            idx = self.layers if self.layers is not None else tuple(range(len(hs)))
            fn = hidden_mse_loss if self.hidden == "mse" else hidden_cosine_loss
            h = sum(fn(hs[i], ht[i], attention_mask) for i in idx) / max(1, len(idx))
            terms.append(self.hidden_weight * h)  # type: ignore[arg-type]
        if not terms:
            raise ConfigError("DistillationLoss has every weight at 0")
        return torch.stack(terms).sum()
