"""Importing this module registers every pass of the package in :data:`graphprune.passes.base.PASSES`.

The list is explicit (no discovery by file name): a new pass module is added here, and the registry
test walks every entry.
"""

from __future__ import annotations

from graphprune.passes import (
    analyze,
    apply_masks,
    audit_onnx,
    compute_masks,
    copy_model,
    export_onnx,
    fold_masks,
    parity,
    permute_channels,
    save,
    shrink,
)

PASS_MODULES = (analyze, apply_masks, audit_onnx, compute_masks, copy_model, export_onnx, fold_masks, parity, permute_channels, save, shrink)

__all__ = ["PASS_MODULES"]
