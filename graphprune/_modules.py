"""Module helpers that also work on TorchScript modules (which lack ``get_parameter``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the block, then every submodule's own training flag back as it was."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, t in modes.items():
            m.training = t


def get_param(module: nn.Module, name: str) -> torch.Tensor:
    """The tensor at dotted ``name`` (``layer.0.weight``), for nn.Module and ScriptModule alike."""
    obj: object = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"{type(module).__name__} has no parameter {name!r} (missing {part!r})") from None
    if not isinstance(obj, torch.Tensor):
        raise AttributeError(f"{name!r} is a {type(obj).__name__}, not a tensor")
    return obj
