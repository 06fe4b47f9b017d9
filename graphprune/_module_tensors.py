"""The one way graphprune reads and replaces a module's tensors by dotted name, and the eval-mode block.

Works on ``nn.Module`` and TorchScript modules alike (a ScriptModule lacks ``get_parameter``), and on
parametrized modules (``weight`` is then what the forward sees: the parametrization's output).

- :func:`get_tensor` ``(model, "layer.0.weight")``: the tensor at a dotted name (parameter, buffer or
  tensor attribute), or ``KeyError`` naming the missing part.
- :func:`tensor_refs` / :func:`replace_tensor`: every alias of a tensor (tied weights), and replacing it
  at all of them at once (structured pruning gives a tied tensor one new shape).
- :func:`eval_mode`: ``model.eval()`` for a block, each submodule's own training flag restored after;
  :func:`inference`: the same with ``torch.no_grad()``.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Mapping

import torch
from torch import nn

__all__ = ["TensorRefs", "eval_mode", "get_tensor", "inference", "replace_tensor", "tensor_refs"]

# id(tensor) -> [(fqn, owning module, attribute name, "parameter" | "buffer")], tied aliases included
TensorRefs = Mapping[int, list[tuple[str, nn.Module, str, str]]]


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


@contextlib.contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the block (each module's training flag is restored after)."""
    with eval_mode(model), torch.no_grad():
        yield


def get_tensor(model: nn.Module, fqn: str) -> torch.Tensor:
    """The tensor at dotted ``fqn`` (``encoder.layer.0.weight``): a parameter, a buffer or a tensor attribute."""
    obj: object = model
    for part in fqn.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise KeyError(f"{type(model).__name__} has no tensor {fqn!r} (missing {part!r})") from None
    if not isinstance(obj, torch.Tensor):
        raise KeyError(f"{fqn!r} is a {type(obj).__name__}, not a tensor")
    return obj


def tensor_refs(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str, str]]]:
    """id(tensor) -> [(fqn, owning module, attr name, "parameter"|"buffer")] including tied aliases."""
    refs: dict[int, list[tuple[str, nn.Module, str, str]]] = defaultdict(list)
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, p in mod._parameters.items():
            if p is not None:
                refs[id(p)].append((f"{mname}.{pname}" if mname else pname, mod, pname, "parameter"))
        for bname, b in mod._buffers.items():
            if b is not None:
                refs[id(b)].append((f"{mname}.{bname}" if mname else bname, mod, bname, "buffer"))
    return refs


def replace_tensor(model: nn.Module, fqn: str, new: torch.Tensor, refs: TensorRefs | None = None) -> None:
    """Replace the parameter or buffer at ``fqn`` and at every alias of the same object.

    A parameter stays a parameter (with its ``requires_grad``).
    """
    old = get_tensor(model, fqn)
    refs = refs if refs is not None else tensor_refs(model)
    aliases = refs.get(id(old))
    if not aliases:
        mod_name, _, attr = fqn.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        if attr not in mod._parameters and attr not in mod._buffers:
            raise KeyError(f"{fqn} is neither a parameter nor a buffer of the model")
        aliases = [(fqn, mod, attr, "parameter" if attr in mod._parameters else "buffer")]
    if isinstance(old, nn.Parameter):
        new = nn.Parameter(new, requires_grad=old.requires_grad)
    for _, mod, attr, kind in aliases:
        if kind == "parameter":
            mod._parameters[attr] = new  # type: ignore[assignment]
        else:
            mod._buffers[attr] = new
