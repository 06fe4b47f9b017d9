"""Error hierarchy and the one table of exit codes (:data:`EXIT_CODES`, :func:`exit_code_for`).

Library code raises these and never prints or exits. Every message names the file, layer or
option at fault and says what to do about it. The CLI's one top-level handler turns any exception
into a one-line message and the exit code :func:`exit_code_for` gives it.
"""

from __future__ import annotations

import errno


class GraphPruneError(Exception):
    """Base class of every error graphprune raises on purpose."""

    exit_code = 8


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


class Terminated(BaseException):
    """SIGTERM, turned into an exception by the CLI so that every ``finally`` and staging cleanup runs.

    A BaseException (like KeyboardInterrupt), so that ``except Exception`` blocks do not swallow it.
    """


# Every exit code the command line uses, and what it means (the README's table is tested against it).
EXIT_CODES: dict[int, str] = {
    0: "ok",
    2: "bad option or config",
    3: "bad input file (missing, corrupt, untrusted pickle, failing factory)",
    4: "unsupported model",
    5: "bad weights (NaN/Inf, or the forward overflows its dtype)",
    6: "validation failed (audit or parity)",
    7: "output not writable (permissions, full disk, would overwrite an input)",
    8: "a pass failed, out of memory, or an internal error (please report)",
    9: "missing dependency",
    130: "interrupted (Ctrl-C)",
    143: "terminated (SIGTERM)",
}

# OSErrors that mean "cannot write here" when they escape a run
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or torch's allocator failing ("can't allocate memory", "DefaultCPUAllocator")."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("DefaultCPUAllocator" in text or "can't allocate memory" in text
                                              or "out of memory" in text.lower())


def exit_code_for(exc: BaseException) -> int:
    """The exit code for ``exc`` (one of :data:`EXIT_CODES`)."""
    if isinstance(exc, GraphPruneError):
        return exc.exit_code if exc.exit_code in EXIT_CODES else 8
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, Terminated):
        return 143
    if isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRNOS:
        return 7
    return 8
