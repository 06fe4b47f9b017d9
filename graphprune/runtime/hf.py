"""Models as users write them: named and keyword inputs, KV caches, encoder-decoders.

graphprune's pipeline calls a model with one tuple of positional inputs (capture, masks, export,
parity all use it). :func:`prepare_inputs` turns what a user gives into that tuple, on graphprune's
own copy of the model:

- **Example inputs** may be a tensor, a tuple/list of positional inputs, a dict of named inputs
  (``{"input_ids": ..., "attention_mask": ...}``), or a pair ``(args_tuple, kwargs_dict)`` (what a
  factory returning ``(model, args, kwargs)`` gives; :func:`split_example` says which is which).
  ``input_names`` names positional inputs (CLI ``--input-name``, e.g. for ``--input-shape`` tensors
  of a forward whose second parameter is not the second input).
- **Named inputs bound to positions**: a name that is a positional parameter of ``forward`` takes
  its position; the parameters skipped in between get their default (usually ``None``), exactly
  what a keyword call would give them. Names that can only be passed by keyword (keyword-only
  parameters, ``**kwargs``) make graphprune install a positional *adapter* on its copy: an
  instance-level ``forward(*inputs)`` that calls the class's forward by keyword (parameter names
  and module structure are unchanged; a note says so).
- **KV caches off**: a transformers model whose config has ``use_cache=True`` returns a
  ``DynamicCache`` / ``EncoderDecoderCache`` object, which neither the ONNX exporter nor
  ``torch.export`` can flatten. graphprune sets ``config.use_cache = False`` on every config of
  its copy (and a ``use_cache=True`` input to False) and says so in a note and the capture record:
  the ONNX then computes the model's outputs without the cache tensors, as for a single forward.
- **Encoder-decoders** (``config.is_encoder_decoder``: T5, BART, Whisper, ...): when the forward
  takes ``decoder_input_ids`` and none were given, they are built the way the model builds them
  from labels: ``input_ids`` shifted right with ``decoder_start_token_id`` in front (or
  ``[start] * 4`` when there are no ``input_ids``; T5, whose config has no
  ``decoder_start_token_id``, starts with its ``pad_token_id`` as its own ``_shift_right`` documents);
  without a start token a one-line :class:`~graphprune.errors.InputError` says what to pass.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from graphprune.errors import InputError

__all__ = ["PreparedInputs", "disable_cache", "forward_parameters", "prepare_inputs", "split_example"]

_ADAPTER_ATTR = "_graphprune_input_names"


@dataclass
class PreparedInputs:
    """The positional inputs the pipeline uses, and what was done to get them."""

    args: tuple[Any, ...]
    names: list[str]  # the forward parameter each positional input is bound to
    notes: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)  # for report.capture["inputs"]

    @property
    def tensor_names(self) -> list[str]:
        """Names of the tensor inputs (the ONNX graph's inputs, in order)."""
        return [n for n, a in zip(self.names, self.args) if isinstance(a, torch.Tensor)]


def split_example(example: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` from a tensor, a tuple/list, a dict of named inputs, or an ``(args, kwargs)`` pair."""
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, Mapping):
        bad = [k for k in example if not isinstance(k, str)]
        if bad:
            raise InputError(f"named example inputs need string keys (forward parameter names), got {bad[0]!r}")
        return (), dict(example)
    if isinstance(example, (tuple, list)):
        if (
            len(example) == 2
            and isinstance(example[0], (tuple, list))
            and isinstance(example[1], Mapping)
            and all(isinstance(k, str) for k in example[1])
        ):
            return tuple(example[0]), dict(example[1])
        return tuple(example), {}
    raise InputError(
        f"example inputs must be a tensor, a tuple of positional inputs, a dict of named inputs or "
        f"(args, kwargs); got {type(example).__name__}"
    )


def forward_parameters(model: Any) -> list[inspect.Parameter] | None:
    """The parameters of ``model.forward`` (without ``self``), or None when there is no Python signature."""
    if isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        return None
    fn = model.module().forward if isinstance(model, torch.export.ExportedProgram) else getattr(model, "forward", model)
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None


def disable_cache(model: nn.Module) -> list[str]:
    """Set ``use_cache = False`` on every transformers config of ``model`` (and nested configs).

    Returns the class names of the configs that had it on. ``model`` must be graphprune's own copy.
    """
    changed: list[str] = []
    seen: set[int] = set()

    def visit(cfg: Any) -> None:
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "to_dict"):
            return
        seen.add(id(cfg))
        if getattr(cfg, "use_cache", None) is True:
            cfg.use_cache = False
            changed.append(type(cfg).__name__)
        for v in list(vars(cfg).values()):
            if hasattr(v, "use_cache") and hasattr(v, "to_dict"):
                visit(v)

    for m in model.modules():
        visit(getattr(m, "config", None))
    return changed


def _decoder_inputs(model: nn.Module, named: dict[str, Any], params: list[inspect.Parameter]) -> list[str]:
    """Add ``decoder_input_ids`` for an encoder-decoder that needs them; returns notes."""
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "is_encoder_decoder", False):
        return []
    pnames = {p.name for p in params}
    if "decoder_input_ids" not in pnames:
        return []
    given = {k for k, v in named.items() if v is not None}
    if given & {"decoder_input_ids", "decoder_inputs_embeds", "labels", "encoder_outputs"}:
        return []
    start = getattr(config, "decoder_start_token_id", None)
    source = "decoder_start_token_id"
    if start is None and hasattr(model, "_shift_right") and getattr(config, "pad_token_id", None) is not None:
        start, source = config.pad_token_id, "pad_token_id (T5's convention; its config has no decoder_start_token_id)"
    cls = type(model).__name__
    if start is None:
        raise InputError(
            f"{cls} is an encoder-decoder and its forward needs decoder_input_ids: pass them with the example "
            "inputs (a dict {'input_ids': ..., 'decoder_input_ids': ...}, or a factory returning (model, args, kwargs)); "
            "its config has no decoder_start_token_id to build them from"
        )
    ids = named.get("input_ids")
    if isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.shape[1] >= 2:
        dec = torch.cat([torch.full_like(ids[:, :1], int(start)), ids[:, :-1]], dim=1)
        how = "input_ids shifted right"
    else:
        batch = next((int(v.shape[0]) for v in named.values() if isinstance(v, torch.Tensor) and v.dim()), 1)
        dec = torch.full((batch, 4), int(start), dtype=torch.long)
        how = "4 start tokens per row"
    named["decoder_input_ids"] = dec
    return [
        f"{cls} is an encoder-decoder: decoder_input_ids {list(dec.shape)} built from {how} with "
        f"start token {int(start)} from {source} (pass decoder_input_ids to choose them)"
    ]


def _keyword_forward(self: nn.Module, *inputs: Any) -> Any:
    names: list[str] = getattr(self, _ADAPTER_ATTR)
    return type(self).forward(self, **dict(zip(names, inputs)))


def prepare_inputs(
    model: nn.Module,
    example: Any,
    *,
    input_names: Sequence[str] | None = None,
    cache: bool = False,
) -> PreparedInputs:
    """Bind ``example`` to ``model``'s forward as positional inputs; turn KV caches off (see the module docstring).

    ``model`` is graphprune's own copy: its configs may get ``use_cache = False`` and, for
    keyword-only inputs, an instance-level positional ``forward`` adapter. ``cache=True`` leaves
    caches as they are. Raises :class:`InputError` (one line) for a name the forward does not take,
    a missing required input, or an encoder-decoder without a way to build its decoder inputs.
    """
    args, kwargs = split_example(example)
    notes: list[str] = []
    record: dict[str, Any] = {}
    cls = type(model).__name__
    params = forward_parameters(model)
    if input_names:
        names_given = list(input_names)
        if len(names_given) > len(args):
            raise InputError(
                f"{len(names_given)} input names given ({', '.join(names_given)}) for {len(args)} positional input(s)"
            )
        kwargs = {**dict(zip(names_given, args)), **kwargs}
        args = args[len(names_given):] if len(names_given) < len(args) else ()
        if args:
            raise InputError(f"input names cover {len(names_given)} of {len(names_given) + len(args)} inputs: name every input")
    if not cache and isinstance(model, nn.Module):
        changed = disable_cache(model)
        if changed:
            notes.append(
                f"use_cache turned off on graphprune's copy of {cls} ({', '.join(sorted(set(changed)))}.use_cache was True): "
                "the KV cache objects it returns cannot be exported; the ONNX computes one forward without them"
            )
            record["cache"] = "off (config.use_cache was True)"
    if params is None:  # TorchScript: positional only
        if kwargs:
            raise InputError(f"{cls} is a TorchScript module: give its inputs by position, not by name ({', '.join(kwargs)})")
        return PreparedInputs(tuple(args), [f"input_{i}" for i in range(len(args))], notes, record)
    if not cache and kwargs.get("use_cache") is True:
        kwargs["use_cache"] = False
        notes.append(f"use_cache=True in the example inputs of {cls} turned off (the cache objects cannot be exported)")
        record["cache"] = "off (use_cache=True input)"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_var_pos = any(p.kind == p.VAR_POSITIONAL for p in params)
    if len(args) > len(positional) and not has_var_pos:
        raise InputError(f"{cls}.forward takes {len(positional)} positional input(s), {len(args)} given")
    names = [p.name for p in positional[: len(args)]] + [f"input_{i}" for i in range(len(positional), len(args))]
    dup = [k for k in kwargs if k in names]
    if dup:
        raise InputError(f"input {dup[0]!r} of {cls} given both by position and by name")
    known = {p.name for p in params}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    unknown = [k for k in kwargs if k not in known and not var_kw]
    if unknown:
        raise InputError(
            f"{cls}.forward has no input named {unknown[0]!r}; it takes {', '.join(p.name for p in params)}"
        )
    named = {**dict(zip(names, args)), **kwargs}
    notes += _decoder_inputs(model, named, params)
    kwargs = {k: v for k, v in named.items() if k not in names}
    bound = list(args)
    rest = dict(kwargs)
    for p in positional[len(args):]:
        if not rest:
            break
        if p.name in rest:
            bound.append(rest.pop(p.name))
        elif p.default is not inspect.Parameter.empty:
            bound.append(p.default)
        else:
            raise InputError(f"{cls}.forward needs input {p.name!r} (no default); give it with the example inputs")
        names.append(p.name)
    for p in positional[len(bound):]:
        if p.default is inspect.Parameter.empty:
            raise InputError(f"{cls}.forward needs input {p.name!r} (no default); give it with the example inputs")
    if rest:  # keyword-only parameters or **kwargs: positional adapter on graphprune's copy
        order = names + list(rest)
        setattr(model, _ADAPTER_ATTR, order)
        model.forward = types.MethodType(_keyword_forward, model)
        bound += list(rest.values())
        names = order
        notes.append(
            f"{cls}.forward takes {', '.join(rest)} by keyword only: graphprune's copy got a positional adapter "
            f"forward({', '.join(order)}) calling it by name"
        )
        record["keyword_adapter"] = order
    record["names"] = [n for n, a in zip(names, bound) if isinstance(a, torch.Tensor)]
    return PreparedInputs(tuple(bound), names, notes, record)


def bind_batch(batch: Any, prep: PreparedInputs, *, what: str, dtype: str | None = None) -> tuple[Any, ...]:
    """A calibration / evaluation batch as the positional inputs the prepared copy takes: a dict of named
    inputs bound by the names the example was bound by (inputs the batch lacks keep the example's
    non-tensor values, e.g. defaults; a missing tensor input is an InputError naming it); floating
    inputs cast to ``dtype`` (``--dtype``) as the example was."""
    from graphprune.runtime.precision import cast_inputs, resolve_dtype

    if isinstance(batch, Mapping):
        unknown = [k for k in batch if k not in prep.names]
        if unknown:
            raise InputError(f"{what} has input {unknown[0]!r}, which the example inputs did not have ({', '.join(prep.names)})")
        bound = []
        for name, example_value in zip(prep.names, prep.args):
            if name in batch:
                bound.append(batch[name])
            elif isinstance(example_value, torch.Tensor):
                raise InputError(f"{what} lacks input {name!r}, which the example inputs had")
            else:
                bound.append(example_value)
        out: tuple[Any, ...] = tuple(bound)
    else:
        out = tuple(batch)
    return cast_inputs(out, resolve_dtype(dtype)) if dtype is not None else out


def prepare_model(model: nn.Module, example: Any, options: Any = None) -> PreparedInputs:
    """Everything done to graphprune's own copy before capture: inputs bound, caches off, dtype cast.

    ``options``: an :class:`~graphprune.runtime.export.ExportOptions` (its ``input_names`` and
    ``dtype``). Notes and the record say what changed.
    """
    from graphprune.runtime.precision import cast_inputs, cast_model, model_dtype, resolve_dtype

    names = getattr(options, "input_names", None)
    prep = prepare_inputs(model, example, input_names=names)
    want = getattr(options, "dtype", None)
    if want is not None:
        dtype = resolve_dtype(want)
        note = cast_model(model, dtype)
        if note:
            prep.notes.append(f"{type(model).__name__} {note}")
        prep.args = cast_inputs(prep.args, dtype)
    dt = model_dtype(model) if isinstance(model, nn.Module) else None
    if dt is not None:
        prep.record["dtype"] = str(dt).removeprefix("torch.")
    return prep
