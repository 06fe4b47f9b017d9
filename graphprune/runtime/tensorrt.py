"""TensorRT engines with 2:4 sparse weights: build, see which layers run sparse, time against dense.

TensorRT looks for 2:4 patterns in the initializers of an ONNX file (graphprune's folded form)
when the builder flag ``SPARSE_WEIGHTS`` is set, and then *chooses*: a layer keeps a dense tactic
whenever that is faster (small GEMMs usually are). So a sparse build proves nothing by itself;
this module reports, per layer, whether a sparse tactic was picked:

- from the build log: TensorRT logs ``(Sparsity) Layers eligible for sparse math: A, B + C, ...``
  and ``(Sparsity) TRT inference plan picked sparse implementation for layers: ...`` at INFO level
  (:func:`parse_sparsity_log`);
- from the engine inspector (``engine.create_engine_inspector()``, JSON, built with
  ``ProfilingVerbosity.DETAILED``): each layer's ``TacticName``; sparse kernels carry ``sparse`` in
  their names (:func:`parse_inspector_json`).

:func:`compare_sparse_dense` builds the pruned ONNX twice (with and without ``SPARSE_WEIGHTS``, the
same precision flags), times both engines in alternating blocks with CUDA events after warm-up, and
returns per-layer records plus min / median / ratio of medians.

``tensorrt`` is imported lazily; a missing package or GPU raises
:class:`~graphprune.errors.DependencyError` saying so. Parsing (log and inspector JSON) needs
neither and is tested on canned text.

Precision flags: ``fp16`` / ``bf16`` allow those tactics; ``int8`` allows INT8 tactics, which
TensorRT uses only where the ONNX carries Q/DQ nodes (explicit quantization): graphprune passes
no calibrator, so without Q/DQ the layers stay at the other allowed precisions.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from graphprune.errors import ConfigError, DependencyError, InputError

__all__ = [
    "EngineBuild",
    "SparseEngineReport",
    "TrtLayer",
    "build_engine",
    "compare_sparse_dense",
    "merge_sparsity",
    "parse_inspector_json",
    "parse_sparsity_log",
    "require_tensorrt",
    "time_engines",
]

_ELIGIBLE = re.compile(r"\(Sparsity\)\s*Layers eligible for sparse math:\s*(.*)$")
_PICKED = re.compile(r"\(Sparsity\)\s*TRT inference plan picked sparse implementation for layers:\s*(.*)$")


@dataclass
class TrtLayer:
    """One layer of a built engine."""

    name: str
    layer_type: str = ""
    tactic: str = ""
    precision: str = ""  # output precision(s), e.g. "Half"
    eligible: bool | None = None  # TensorRT found 2:4 weights it could run sparse (build log)
    sparse: bool | None = None  # a sparse tactic was picked (tactic name or build log); None: unknown
    origin: str = ""  # ONNX node names from the layer's metadata, when TensorRT records them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EngineBuild:
    engine: bytes
    layers: list[TrtLayer]
    flags: list[str]
    seconds: float
    eligible: list[str] = field(default_factory=list)
    picked: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "flags": self.flags,
            "seconds": self.seconds,
            "eligible": self.eligible,
            "picked": self.picked,
            "layers": [lay.to_dict() for lay in self.layers],
            "engine_bytes": len(self.engine),
        }


# ---- parsing (no TensorRT needed) ----------------------------------------------------------------------
def _split_layer_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def parse_sparsity_log(lines: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(eligible, picked)`` layer names from a TensorRT build log (one message per line or entry)."""
    eligible: list[str] = []
    picked: list[str] = []
    for line in lines:
        for part in str(line).splitlines():
            m = _ELIGIBLE.search(part)
            if m:
                eligible.extend(_split_layer_list(m.group(1)))
                continue
            m = _PICKED.search(part)
            if m:
                picked.extend(_split_layer_list(m.group(1)))
    return eligible, picked


_DTYPE_WORD = re.compile(r"\b(FP32|FP16|BF16|FP8|FP4|INT8|Int8|INT32|Int32|INT64|Int64|Bool|Half|Float)\b")


def _precision(layer: Mapping[str, Any]) -> str:
    """Output data types named in the layer's ``Format/Datatype`` strings (``"FP16"``, ``"Int8"``, ...)."""
    outs = layer.get("Outputs") or []
    found: list[str] = []
    for o in outs if isinstance(outs, list) else []:
        if isinstance(o, Mapping):
            found += _DTYPE_WORD.findall(str(o.get("Format/Datatype", "")))
    return ",".join(dict.fromkeys(found))


def parse_inspector_json(info: str | Mapping[str, Any]) -> list[TrtLayer]:
    """Per-layer records from ``inspector.get_engine_information(LayerInformationFormat.JSON)``.

    With ``ProfilingVerbosity.DETAILED`` each layer is an object with ``Name``, ``LayerType``,
    ``TacticName``, ``Outputs`` and ``Metadata``; with ``LAYER_NAMES_ONLY`` a bare name (tactic and
    sparsity then stay unknown). InputError on text that is not such JSON.
    """
    try:
        data = json.loads(info) if isinstance(info, str) else info
    except json.JSONDecodeError as e:
        raise InputError(f"engine inspector output is not JSON: {e}") from e
    if not isinstance(data, Mapping) or not isinstance(data.get("Layers"), list):
        raise InputError("engine inspector JSON has no 'Layers' list (was the engine built with ProfilingVerbosity.DETAILED?)")
    out: list[TrtLayer] = []
    for entry in data["Layers"]:
        if isinstance(entry, str):
            out.append(TrtLayer(name=entry))
            continue
        if not isinstance(entry, Mapping):
            continue
        tactic = str(entry.get("TacticName", "") or "")
        meta = str(entry.get("Metadata", "") or "")
        origin = ",".join(re.findall(r"\[ONNX Layer: ([^\]]+)\]", meta)) or meta
        out.append(
            TrtLayer(
                name=str(entry.get("Name", "")),
                layer_type=str(entry.get("LayerType", "")),
                tactic=tactic,
                precision=_precision(entry),
                sparse=("sparse" in tactic.lower()) if tactic else None,
                origin=origin,
            )
        )
    return out


def merge_sparsity(layers: Sequence[TrtLayer], eligible: Iterable[str], picked: Iterable[str]) -> list[TrtLayer]:
    """Fill ``eligible`` / ``sparse`` of each layer from the build log (a log match wins over an
    unknown tactic; a sparse tactic name stays sparse)."""
    el, pk = set(eligible), set(picked)
    for lay in layers:
        if el:
            lay.eligible = lay.name in el
        if lay.name in pk:
            lay.sparse = True
        elif lay.sparse is None and (pk or el):
            lay.sparse = False
    return list(layers)


# ---- building and timing (TensorRT + CUDA) ---------------------------------------------------------------
def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or DependencyError saying what is missing (the package or a GPU)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise DependencyError(
            "TensorRT is not installed: pip install 'graphprune[tensorrt]' (tensorrt>=10) on a machine with an NVIDIA GPU"
        ) from e
    import torch

    if not torch.cuda.is_available():
        raise DependencyError("TensorRT needs a CUDA GPU, and torch.cuda.is_available() is False on this machine")
    return trt


def _make_logger(trt: Any, sink: list[str]) -> Any:
    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            sink.append(str(msg))

    return _Logger()


def build_engine(
    onnx_path: str | Path,
    *,
    sparse: bool = True,
    fp16: bool = True,
    bf16: bool = False,
    int8: bool = False,
    workspace_gib: float = 4.0,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> EngineBuild:
    """Build a serialized engine from ``onnx_path`` with the given flags; see the module docstring.

    ``input_shapes``: shape of each input with dynamic dimensions (min = opt = max); dynamic
    dimensions not given are set to 1. Raises DependencyError (no TensorRT / GPU) or InputError
    (TensorRT cannot parse or build the file; the parser's errors are in the message).
    """
    trt = require_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"ONNX file {onnx_path} does not exist")
    messages: list[str] = []
    logger = _make_logger(trt, messages)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    flags: list[str] = []
    for enabled, name in ((sparse, "SPARSE_WEIGHTS"), (fp16, "FP16"), (bf16, "BF16"), (int8, "INT8")):
        if enabled:
            config.set_flag(getattr(trt.BuilderFlag, name))
            flags.append(name)
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            want = list((input_shapes or {}).get(tensor.name, [d if d >= 0 else 1 for d in shape]))
            if len(want) != len(shape):
                raise ConfigError(f"input_shapes[{tensor.name!r}] has rank {len(want)}, the network input has rank {len(shape)}")
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(tensor.name, want, want, want)
    if profile is not None:
        config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        tail = "; ".join(messages[-5:])
        raise InputError(f"TensorRT could not build an engine from {onnx_path} (flags {flags}): {tail}")
    engine_bytes = bytes(serialized)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    inspector = engine.create_engine_inspector()
    layers = parse_inspector_json(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    eligible, picked = parse_sparsity_log(messages)
    merge_sparsity(layers, eligible, picked)
    return EngineBuild(engine_bytes, layers, flags, seconds, eligible, picked, messages)


class _Runner:
    """One engine with device buffers for every I/O tensor, ready to enqueue."""

    def __init__(self, trt: Any, engine_bytes: bytes, inputs: Mapping[str, Any] | None) -> None:
        import torch

        self.torch = torch
        logger = _make_logger(trt, [])
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
        self.context = self.engine.create_execution_context()
        dtypes = {
            trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64,
            trt.int8: torch.int8, trt.bool: torch.bool, trt.bfloat16: torch.bfloat16,
        }
        self.buffers: dict[str, Any] = {}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in names:
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                given = (inputs or {}).get(name)
                dtype = dtypes[self.engine.get_tensor_dtype(name)]
                if given is not None:
                    t = torch.as_tensor(given).to("cuda", dtype)
                else:
                    shape = [d if d >= 0 else 1 for d in self.engine.get_tensor_shape(name)]
                    t = torch.zeros(shape, dtype=dtype, device="cuda") if not dtype.is_floating_point else torch.randn(shape, device="cuda").to(dtype)
                self.context.set_input_shape(name, tuple(t.shape))
                self.buffers[name] = t.contiguous()
        for name in names:
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                out_shape = tuple(self.context.get_tensor_shape(name))
                self.buffers[name] = torch.empty(out_shape, dtype=dtypes[self.engine.get_tensor_dtype(name)], device="cuda")
        for name, t in self.buffers.items():
            self.context.set_tensor_address(name, t.data_ptr())
        self.stream = torch.cuda.Stream()

    def run(self, reps: int) -> float:
        """Enqueue ``reps`` runs; milliseconds per run (CUDA events)."""
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self.stream):
            start.record(self.stream)
            for _ in range(reps):
                self.context.execute_async_v3(self.stream.cuda_stream)
            end.record(self.stream)
        end.synchronize()
        return float(start.elapsed_time(end)) / reps


def time_engines(
    engines: Mapping[str, bytes],
    *,
    inputs: Mapping[str, Any] | None = None,
    warmup: int = 10,
    blocks: int = 7,
    reps: int = 20,
) -> dict[str, dict[str, float]]:
    """Time several engines in alternating blocks (CUDA events); ``{name: {min_ms, median_ms}}``."""
    trt = require_tensorrt()
    runners = {name: _Runner(trt, data, inputs) for name, data in engines.items()}
    for r in runners.values():
        r.run(warmup)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(blocks):
        for name, r in runners.items():
            samples[name].append(r.run(reps))
    return {name: {"min_ms": min(s), "median_ms": statistics.median(s)} for name, s in samples.items()}


@dataclass
class SparseEngineReport:
    sparse_build: EngineBuild
    dense_build: EngineBuild
    timings: dict[str, dict[str, float]]
    gpu: str = ""

    @property
    def ratio(self) -> float:
        """dense median / sparse median (> 1: the sparse engine is faster)."""
        return self.timings["dense"]["median_ms"] / self.timings["sparse"]["median_ms"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "timings": self.timings,
            "ratio": self.ratio,
            "sparse": self.sparse_build.to_dict(),
            "dense": self.dense_build.to_dict(),
        }

    def table(self) -> str:
        head = f"{'layer':<60} {'type':<22} {'eligible':>8} {'sparse':>6}  tactic"
        lines = [head, "-" * len(head)]
        for lay in self.sparse_build.layers:
            name = lay.name if len(lay.name) <= 60 else "…" + lay.name[-59:]
            el = "-" if lay.eligible is None else ("yes" if lay.eligible else "no")
            sp = "?" if lay.sparse is None else ("yes" if lay.sparse else "no")
            lines.append(f"{name:<60} {lay.layer_type[:22]:<22} {el:>8} {sp:>6}  {lay.tactic[:60]}")
        t = self.timings
        lines.append(
            f"dense {t['dense']['median_ms']:.3f} ms (min {t['dense']['min_ms']:.3f}), sparse {t['sparse']['median_ms']:.3f} ms "
            f"(min {t['sparse']['min_ms']:.3f}): {self.ratio:.2f}x; {len(self.sparse_build.picked)} layer(s) picked sparse tactics"
        )
        return "\n".join(lines)


def compare_sparse_dense(
    onnx_path: str | Path,
    *,
    fp16: bool = True,
    bf16: bool = False,
    int8: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    inputs: Mapping[str, Any] | None = None,
    blocks: int = 7,
) -> SparseEngineReport:
    """Build ``onnx_path`` with and without ``SPARSE_WEIGHTS`` (same precision flags) and time both."""
    import torch

    kw: dict[str, Any] = {"fp16": fp16, "bf16": bf16, "int8": int8, "input_shapes": input_shapes}
    sparse_b = build_engine(onnx_path, sparse=True, **kw)
    dense_b = build_engine(onnx_path, sparse=False, **kw)
    timings = time_engines({"dense": dense_b.engine, "sparse": sparse_b.engine}, inputs=inputs, blocks=blocks)
    return SparseEngineReport(sparse_b, dense_b, timings, gpu=torch.cuda.get_device_name())
