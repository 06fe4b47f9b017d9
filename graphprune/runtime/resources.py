"""Will it fit? Memory and disk checks made before the long stages start.

A compile of a 1B-parameter model runs for minutes; running out of memory (the kernel kills the
process, no message) or of disk (half an ONNX data file) at the end of it wastes them. These
functions are called early, from the model's parameter bytes, and raise one-line errors:

- :func:`check_memory`: graphprune's copy of the model (1x its weight bytes, unless the caller
  hands the model over), the masks (bool, one byte per pruned weight, held while the masked form is
  built) and the onnxruntime session of the parity check (1x, the weights of the ONNX file) must fit
  in the memory available now (``MemAvailable`` of ``/proc/meminfo``). Raises
  :class:`~graphprune.errors.InputError` (the model is too large for this machine).
- :func:`check_free_space`: the output folder's filesystem must have room for what will be written
  there (ONNX initializers, ``pruned.pt2``). Raises :class:`~graphprune.errors.OutputError` (exit 7).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphprune.errors import InputError, OutputError
from graphprune.io.files import available_memory

__all__ = [
    "available_memory",
    "check_free_space",
    "check_memory",
    "compile_disk_bytes",
    "compile_memory_bytes",
    "weight_bytes",
]

GB = 1e9


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (each tensor once, tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    tensors: list[torch.Tensor] = [*model.parameters(), *model.buffers()]
    for t in tensors:
        if t.device.type == "meta":
            total += t.numel() * t.element_size()
            continue
        key = t.data_ptr() if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def compile_memory_bytes(model: nn.Module, *, copy: bool = True, validate: bool = True, masks: bool = True) -> dict[str, int]:
    """What a compile of ``model`` needs beyond what the process holds now, stage by stage (bytes).

    ``copy``: graphprune deep-copies the caller's model (1x weights); ``masks``: one bool per
    prunable weight element (<= 1/4 of float32 weight bytes, held while masks are applied);
    ``validate``: the onnxruntime session of the parity check maps the ONNX weights (1x).
    """
    w = weight_bytes(model)
    elems = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    return {
        "weights": w,
        "copy": w if copy else 0,
        "masks": elems if masks else 0,
        "parity": w if validate else 0,
    }


def check_memory(
    model: nn.Module,
    *,
    copy: bool = True,
    validate: bool = True,
    available: int | None = None,
    what: str = "",
) -> dict[str, Any]:
    """Raise :class:`InputError` when compiling ``model`` cannot fit in the memory available now.

    The need is the larger of the rewrite stage (copy + masks) and the parity stage (copy + the
    onnxruntime session); the caller's own model is already resident and is not counted again.
    Returns the estimate (bytes) for the report.
    """
    need = compile_memory_bytes(model, copy=copy, validate=validate)
    peak = need["copy"] + max(need["masks"], need["parity"])
    avail = available_memory() if available is None else available
    record: dict[str, Any] = {"weight_bytes": need["weights"], "extra_bytes_needed": peak, "available_bytes": avail}
    if avail is not None and peak > avail:
        name = what or type(model).__name__
        how = [] if not copy else ["hand the model over (compile(..., copy=False): no defensive copy)"]
        if validate:
            how.append("skip the onnxruntime parity check (validate=False)")
        raise InputError(
            f"{name} has {need['weights'] / GB:.2f} GB of weights; compiling it needs about {peak / GB:.2f} GB more "
            f"memory but {avail / GB:.2f} GB is available: free memory, "
            + ", ".join([*how, "or use a machine with more RAM"])
        )
    return record


def compile_disk_bytes(model: nn.Module, *, onnx: bool = True, pt2: bool = True) -> int:
    """Bytes a compile writes to its output folder: the ONNX initializers and ``pruned.pt2`` (1x weights each)."""
    w = weight_bytes(model)
    return (w if onnx else 0) + (w if pt2 else 0) + 16 * 1024 * 1024  # + graphs, report


def check_free_space(directory: str | os.PathLike[str], need_bytes: int, *, what: str) -> int:
    """Raise :class:`OutputError` when ``directory``'s filesystem has less than ``need_bytes`` free.

    ``what`` names what is to be written (e.g. "the ONNX external data of LlamaForCausalLM").
    ``directory`` may not exist yet: its nearest existing parent is measured. Returns the free bytes.
    """
    path = Path(directory)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError as e:
        raise OutputError(f"cannot read the free space of {path}: {e}") from e
    if need_bytes > free:
        raise OutputError(
            f"output folder {path} has {free / GB:.2f} GB free but {what} needs {need_bytes / GB:.2f} GB; "
            "free space there or choose another -o folder"
        )
    return free
