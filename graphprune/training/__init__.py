"""Pruning-aware training: ASP-style sparse retraining, schedules, movement / L0 pruning, one-shot
calibration pruning (Wanda, SparseGPT), distillation and contrastive recovery, DDP helpers.

The Hugging Face ``Trainer`` callback lives in :mod:`graphprune.training.hf_callback` (imports
transformers); nothing else here does.
"""

from graphprune.analysis.module_sites import SiteEntry, find_prunable_sites
from graphprune.training.asp import (
    ASP,
    PruningOrderError,
    asp_for,
    compute_sparse_masks,
    init_model_for_pruning,
    init_optimizer_for_pruning,
    prune_trained_model,
    restore_pruned_weights,
)
from graphprune.training.contrastive import ContrastiveLoss, RepresentationQueue, Snapshots, info_nce
from graphprune.training.distill import DistillationLoss, hidden_cosine_loss, hidden_mse_loss, kd_logits_loss, mean_pool
from graphprune.training.gradual import GradualPruner
from graphprune.training.loop import TrainResult, train
from graphprune.training.movement import Groups, MovementPruner
from graphprune.training.oneshot import prune_oneshot
from graphprune.training.schedules import Cubic, Iterative, OneShot, schedule_from_dict

__all__ = [
    "ASP",
    "ContrastiveLoss",
    "Cubic",
    "DistillationLoss",
    "GradualPruner",
    "Groups",
    "Iterative",
    "MovementPruner",
    "OneShot",
    "PruningOrderError",
    "RepresentationQueue",
    "SiteEntry",
    "Snapshots",
    "TrainResult",
    "asp_for",
    "compute_sparse_masks",
    "find_prunable_sites",
    "hidden_cosine_loss",
    "hidden_mse_loss",
    "info_nce",
    "init_model_for_pruning",
    "init_optimizer_for_pruning",
    "kd_logits_loss",
    "mean_pool",
    "prune_oneshot",
    "prune_trained_model",
    "restore_pruned_weights",
    "schedule_from_dict",
    "train",
]
