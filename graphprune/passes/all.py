"""Importing this module registers every pass of the package in :data:`graphprune.passes.base.PASSES`.

The list is explicit (no discovery by file name): a new pass module is added here, and the registry
test walks every entry.
"""

from __future__ import annotations

import importlib

from graphprune.passes import (
    analyze,
    apply_masks,
    audit_onnx,
    compute_masks,
    convert_sparse_forms,
    copy_model,
    cuda_artifact,
    export_onnx,
    fidelity,
    fold_masks,
    parity,
    permute_channels,
    save,
    shrink,
)

# the calibrate package re-exports its pass functions under their module names: import the modules by path
apply_plan, budget, calibrate, data = (
    importlib.import_module(f"graphprune.passes.calibrate.{name}") for name in ("apply_plan", "budget", "calibrate", "data")
)

PASS_MODULES = (
    analyze,
    apply_masks,
    apply_plan,
    audit_onnx,
    budget,
    calibrate,
    compute_masks,
    convert_sparse_forms,
    copy_model,
    cuda_artifact,
    data,
    export_onnx,
    fidelity,
    fold_masks,
    parity,
    permute_channels,
    save,
    shrink,
)

__all__ = ["PASS_MODULES"]
