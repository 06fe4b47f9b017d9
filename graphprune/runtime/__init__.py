"""Runtimes around the pruned model: ONNX export, ONNX audit, onnxruntime parity, the tolerance policy.

onnxruntime is imported lazily (only when a session is made), so importing this package needs only
torch and onnx. TensorRT support (``tensorrt.py``) is separate and optional.
"""

from graphprune.runtime.audit import AuditLayer, AuditReport, WeightUse, audit_onnx, find_weight_uses
from graphprune.runtime.compare import ParityStats, Tolerance, assert_close, compare_outputs, tolerance_for
from graphprune.runtime.export import ExportRecord, export_onnx
from graphprune.runtime.ort import check_parity, ort_session, random_inputs, run_onnx

__all__ = [
    "AuditLayer",
    "AuditReport",
    "ExportRecord",
    "ParityStats",
    "Tolerance",
    "WeightUse",
    "assert_close",
    "audit_onnx",
    "check_parity",
    "compare_outputs",
    "export_onnx",
    "find_weight_uses",
    "ort_session",
    "random_inputs",
    "run_onnx",
    "tolerance_for",
]
