"""Module helpers that also work on TorchScript modules (which lack ``get_parameter``)."""

from __future__ import annotations

import torch
from torch import nn


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
