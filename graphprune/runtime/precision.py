"""Model dtypes: casting on the way in, and float32 copies where onnxruntime CPU cannot run the model's own.

- :func:`resolve_dtype` turns a user's dtype option into a torch dtype, or a one-line
  :class:`~graphprune.errors.ConfigError` for one the target cannot run: the ONNX goes to TensorRT,
  which builds float32, float16 and bfloat16 engines (no float64, and integer types are
  quantization, which graphprune does not do).
- :func:`cast_model` casts graphprune's copy (parameters and floating buffers) and the floating
  example inputs; the exported ONNX then keeps that dtype (what TensorRT takes).
- onnxruntime's CPU provider has no bfloat16 kernels for MatMul/Gemm/LayerNormalization and only
  some float16 ones. Parity of a float16/bfloat16 ONNX therefore runs on a float32 *copy* of the graph
  (:func:`upcast_onnx`: every float16/bfloat16 initializer, constant, Cast target and value type
  becomes float32; written beside the file, streamed tensor by tensor, deleted afterwards). Each
  upcast value is exact (float32 holds every float16 and bfloat16 value), so the copy computes the
  graph's function in float32 (its folded constants stay rounded to the file's dtype: parity uses
  that dtype's tolerance).
- :func:`upcast_in_place` gives the matching torch reference: the model's own parameters and
  buffers are turned into float32 for the reference forward and turned back afterwards (exact round
  trip; no second model in memory beyond the float32 weights themselves).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import nn

from graphprune.errors import ConfigError

__all__ = [
    "DTYPES",
    "LOW_PRECISION",
    "cast_inputs",
    "cast_model",
    "model_dtype",
    "onnx_low_precision",
    "resolve_dtype",
    "upcast_in_place",
    "upcast_onnx",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
LOW_PRECISION = (torch.float16, torch.bfloat16)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bf16"`` / ``"bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``; ConfigError for dtypes the target cannot run."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        name = str(dtype).removeprefix("torch.")
    else:
        name = str(dtype).strip().lower().removeprefix("torch.")
        if name in DTYPES:
            return DTYPES[name]
    if name in ("float64", "double", "fp64"):
        why = "TensorRT (the ONNX target) has no float64 engines"
    elif any(name.startswith(p) for p in ("int", "uint", "bool", "float8", "fp8", "float4")):
        why = "graphprune casts floating weights; integer and 8-bit types are quantization, which it does not do"
    else:
        why = "it is not a torch floating dtype"
    raise ConfigError(f"dtype {dtype!s} cannot be used: {why}; choose float32, float16 or bfloat16")


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype holding most of the model's parameter bytes (None without floating parameters)."""
    sizes: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
    return max(sizes, key=lambda d: sizes[d]) if sizes else None


def cast_inputs(args: Any, dtype: torch.dtype) -> Any:
    """Floating tensors of a pytree of inputs cast to ``dtype`` (integer/bool inputs untouched)."""

    def cast(x: Any) -> Any:
        return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    return pytree.tree_map(cast, args)


def cast_model(model: nn.Module, dtype: torch.dtype) -> str | None:
    """Cast ``model`` (graphprune's copy) to ``dtype`` in place; returns a note, or None when nothing changed."""
    before = model_dtype(model)
    if before is None or before == dtype:
        return None
    if isinstance(model, torch.jit.ScriptModule):
        raise ConfigError(f"dtype {dtype}: a TorchScript module cannot be cast; save it in the dtype you want")
    model.to(dtype)
    return f"cast from {str(before).removeprefix('torch.')} to {str(dtype).removeprefix('torch.')} (dtype option)"


@contextlib.contextmanager
def upcast_in_place(model: nn.Module, dtype: torch.dtype = torch.float32) -> Iterator[bool]:
    """Run the body with every float16/bfloat16 parameter and buffer of ``model`` in ``dtype``; restore after.

    Yields True when something was upcast. Each tensor's ``.data`` is replaced (Parameter objects,
    ties and module structure stay); the original dtypes are restored exactly (the upcast is lossless).
    """
    changed: list[tuple[torch.Tensor, torch.dtype]] = []
    seen: set[int] = set()
    try:
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                if id(t) in seen or t.dtype not in LOW_PRECISION:
                    continue
                seen.add(id(t))
                changed.append((t, t.dtype))
                t.data = t.data.to(dtype)
        yield bool(changed)
    finally:
        with torch.no_grad():
            for t, orig in changed:
                t.data = t.data.to(orig)


# ---- ONNX ------------------------------------------------------------------------------------------
def onnx_low_precision(path: str | os.PathLike[str]) -> str | None:
    """``"float16"`` / ``"bfloat16"`` when the ONNX file's graph inputs, outputs or initializers use it, else None."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found: dict[int, int] = {}
    for t in model.graph.initializer:
        found[t.data_type] = found.get(t.data_type, 0) + 1
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.type.HasField("tensor_type"):
            et = vi.type.tensor_type.elem_type
            found[et] = found.get(et, 0) + 1
    if onnx.TensorProto.BFLOAT16 in found:
        return "bfloat16"
    if onnx.TensorProto.FLOAT16 in found:
        return "float16"
    return None


def upcast_onnx(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, progress: bool = False) -> Path:
    """Write a float32 copy of the ONNX file ``src`` to ``dst`` (float16/bfloat16 everywhere -> float32).

    Initializers are converted one at a time while writing (external data in ``<dst>.data`` when
    ``src`` has external data, else inline), so memory stays bounded by one tensor. Constant values,
    ``Cast``/``ConstantOfShape``/``EyeLike``/random ``dtype`` targets and every value's type change
    with them, in subgraphs too.
    """
    import onnx_ir as ir
    from tqdm.auto import tqdm

    low = {ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
    f32 = ir.DataType.FLOAT
    src, dst = Path(src), Path(dst)
    model = ir.load(str(src))
    external = any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())

    def up_tensor(t: Any) -> Any:
        if t is None or t.dtype not in low:
            return t

        def as_f32() -> Any:  # evaluated when written: one tensor in memory at a time
            return ir.tensor(np.asarray(t.numpy(), dtype=np.float32))

        return ir.LazyTensor(as_f32, dtype=f32, shape=t.shape, name=t.name)

    def up_value(v: ir.Value | None) -> None:
        if v is None:
            return
        if v.dtype in low:
            v.dtype = f32
        if v.const_value is not None:
            v.const_value = up_tensor(v.const_value)

    def up_graph(g: ir.Graph) -> None:
        for v in [*g.inputs, *g.outputs, *g.initializers.values()]:
            up_value(v)
        for node in g:
            for out in node.outputs:
                up_value(out)
            for name, attr in list(node.attributes.items()):
                if attr.type == ir.AttributeType.TENSOR and attr.value is not None and attr.value.dtype in low:
                    arr = np.asarray(attr.value.numpy(), dtype=np.float32)
                    node.attributes[name] = ir.AttrTensor(name, ir.tensor(arr, name=attr.value.name))
                elif attr.type == ir.AttributeType.INT and name in ("to", "dtype") and attr.value in (
                    ir.DataType.FLOAT16.value, ir.DataType.BFLOAT16.value
                ):
                    node.attributes[name] = ir.AttrInt64(name, f32.value)
                elif attr.type == ir.AttributeType.GRAPH:
                    up_graph(attr.value)
                elif attr.type == ir.AttributeType.GRAPHS:
                    for sub in attr.value:
                        up_graph(sub)

    up_graph(model.graph)
    for fn in model.functions.values():
        for node in fn:
            for name, attr in list(node.attributes.items()):
                if attr.type == ir.AttributeType.INT and name in ("to", "dtype") and attr.value in (
                    ir.DataType.FLOAT16.value, ir.DataType.BFLOAT16.value
                ):
                    node.attributes[name] = ir.AttrInt64(name, f32.value)
    n = len(model.graph.initializers)
    with tqdm(total=n, desc="float32 copy for onnxruntime", disable=not progress, leave=False, unit="tensor") as bar:
        def tick(*_: Any) -> None:
            bar.update()

        if external:
            ir.save(model, str(dst), external_data=f"{dst.name}.data", callback=tick)
        else:
            ir.save(model, str(dst))
    return dst
