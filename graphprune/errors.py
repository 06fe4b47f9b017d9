"""Error hierarchy. The CLI maps each type to an exit code (see ``EXIT_CODES``).

Library code raises these and never prints or exits. Every message names the file, layer or
option at fault and says what to do about it.
"""

from __future__ import annotations


class GraphPruneError(Exception):
    """Base class of every error graphprune raises on purpose."""

    exit_code = 1


class ConfigError(GraphPruneError, ValueError):
    """An option, pattern string or config file is invalid."""

    exit_code = 2


class InputError(GraphPruneError):
    """The model file or factory is missing, empty, corrupt, untrusted or of the wrong kind."""

    exit_code = 3


class UnsupportedModelError(GraphPruneError):
    """No capture method could handle the model, or it has nothing graphprune can prune."""

    exit_code = 4


class WeightError(GraphPruneError):
    """A weight cannot be pruned as asked (NaN/Inf values, impossible ratio for a layer)."""

    exit_code = 5


class ValidationError(GraphPruneError):
    """A rewrite or an export does not compute what the pruned model computes, or a pattern audit failed."""

    exit_code = 6


class OutputError(GraphPruneError):
    """The output location is not writable, or would overwrite the input."""

    exit_code = 7


class PassError(GraphPruneError):
    """A pass failed; the message names it and the passes that ran before it."""

    exit_code = 8


class DependencyError(GraphPruneError, ImportError):
    """An optional dependency (onnxruntime, tensorrt, transformers, a GPU) is missing."""

    exit_code = 9


EXIT_CODES: dict[type[GraphPruneError], int] = {
    cls: cls.exit_code
    for cls in (
        GraphPruneError,
        ConfigError,
        InputError,
        UnsupportedModelError,
        WeightError,
        ValidationError,
        OutputError,
        PassError,
        DependencyError,
    )
}
