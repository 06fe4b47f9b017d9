"""graphprune: a pruning compiler for PyTorch.

``graphprune.compile(model, example_inputs, config)`` captures the model as a graph, finds every
prunable weight, computes masks (unstructured, N:M such as 2:4, structured), rewrites the model,
exports ONNX, proves with onnxruntime that the ONNX computes what the pruned model computes, and
reports every layer's decision. Heavy optional dependencies are imported lazily.
"""

from __future__ import annotations

from graphprune.api import CompileResult, compile, load
from graphprune.config import FFN, Channels, CompileConfig, Heads, Hidden, SemiStructured, Unstructured, parse_pattern
from graphprune.errors import (
    ConfigError,
    DependencyError,
    GraphPruneError,
    InputError,
    OutputError,
    PassError,
    UnsupportedModelError,
    ValidationError,
    WeightError,
)
from graphprune.report import CompileReport, Decision, SkipReason

__version__ = "0.1.0"

__all__ = [
    "FFN",
    "Channels",
    "CompileConfig",
    "CompileReport",
    "CompileResult",
    "ConfigError",
    "Decision",
    "DependencyError",
    "GraphPruneError",
    "Heads",
    "Hidden",
    "InputError",
    "OutputError",
    "PassError",
    "SemiStructured",
    "SkipReason",
    "Unstructured",
    "UnsupportedModelError",
    "ValidationError",
    "WeightError",
    "__version__",
    "compile",
    "load",
    "parse_pattern",
]
