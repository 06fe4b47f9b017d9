"""The fast 2:4 artifact: a folder a user loads in one call and runs from CUDA graphs.

Layout of the folder :func:`save_semi_structured` writes::

    weights.safetensors   the whole state dict in the compressed N:M checkpoint format
                          (graphprune.checkpoint: 2:4 values + 2-bit indices, 0.5625x dense fp16
                          for the 2:4 weights; everything else as is), checksummed
    semi_plan.json        which Linear layers are 2:4 and how each token count runs
                          (format graphprune.semi-structured-cuda/1, below)
    alg_cache.json        the algorithm-id cache of the pre-flight (graphprune.semi-algs/1)

``semi_plan.json``::

    {"format": "graphprune.semi-structured-cuda/1", "kernel": "cusparselt", "mode": "graph",
     "env": {"gpu": ..., "cusparselt": ..., "torch": ...},
     "layers": {"model.layers.0.mlp.up_proj": {"in_features": 2048, "out_features": 5632, "bias": false,
                "routes": {"4096": {"form": "sparse", "alg_id": 1, "ratio": 1.31},
                           "4": {"form": "dense", "alg_id": 0, "ratio": 0.52}}}},
     "report": {... the pre-flight's per-layer records ...}}

:func:`load_semi_structured` rebuilds the model from its original constructor (``base``, like
:func:`graphprune.checkpoint.delta.load`): it reads and checks the weights (``load_compressed``: names,
shapes, checksums), assigns them to the base model on ``device``, replaces each listed Linear by a
:class:`~graphprune.runtime.semi_cuda.linear.SemiSparseLinear` (packing its weight on the GPU) with
the recorded routes, and returns a :class:`~graphprune.runtime.semi_cuda.graphs.CudaGraphRunner`
around it (``graphs=True``) that captures one graph per input shape on first use. Every problem
with the folder raises :class:`~graphprune.errors.InputError` naming the file and the layer.
The folder is written as a whole: staged beside the target and renamed into place.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from graphprune.errors import InputError, OutputError
from graphprune.runtime.semi_cuda.linear import Route, SemiSparseLinear

log = logging.getLogger(__name__)

__all__ = ["ALGS_FILE", "PLAN_FORMAT", "SEMI_PLAN_FILE", "WEIGHTS_FILE", "load_semi_structured", "read_plan", "save_semi_structured"]

PLAN_FORMAT = "graphprune.semi-structured-cuda/1"
SEMI_PLAN_FILE = "semi_plan.json"
WEIGHTS_FILE = "weights.safetensors"
ALGS_FILE = "alg_cache.json"


def _plan_layers(model: nn.Module) -> dict[str, SemiSparseLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SemiSparseLinear)}


def save_semi_structured(
    model: nn.Module,
    folder: str | Path,
    *,
    report: Any = None,
    alg_cache: Any = None,
    mode: str = "graph",
) -> Path:
    """Write the artifact of ``model`` (whose 2:4 layers are ``SemiSparseLinear``) into ``folder``.

    ``report``: the pre-flight's ``SparseFormsReport`` (kept in the plan for the record).
    ``alg_cache``: the :class:`~graphprune.runtime.semi_cuda.algs.AlgCache` to ship beside it.
    ``mode``: the execution mode the routes were measured in. Returns the folder.
    """
    from graphprune.checkpoint.compressed import _state_and_axes, save_compressed
    from graphprune.runtime.semi_cuda.algs import environment

    layers = _plan_layers(model)
    if not layers:
        raise InputError(f"{type(model).__name__} has no SemiSparseLinear layers: nothing 2:4 to save (run apply_sparse_forms first)")
    target = Path(folder)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / SEMI_PLAN_FILE).exists())):
        raise OutputError(f"{target} exists and is not an earlier semi-structured artifact: choose an empty or new folder")
    state, axes = _state_and_axes(model)
    kernels = {m.kernel for m in layers.values()}
    plan_layers: dict[str, Any] = {}
    for name, m in layers.items():
        state[f"{name}.weight"] = m.dense_weight()
        plan_layers[name] = {
            "in_features": m.in_features,
            "out_features": m.out_features,
            "bias": m.bias is not None,
            "dtype": str(m.dtype).removeprefix("torch."),
            "routes": {str(t): r.to_dict() for t, r in sorted(m.routes.items())},
        }
    kernel = kernels.pop() if len(kernels) == 1 else "mixed"
    plan = {
        "format": PLAN_FORMAT,
        "kernel": kernel,
        "mode": mode,
        "env": environment(kernel) if kernel != "mixed" else {},
        "layers": plan_layers,
        "report": report.to_dict() if hasattr(report, "to_dict") else report,
    }
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as e:
        raise OutputError(f"cannot write beside {target}: {e}") from e
    try:
        save_compressed(state, stage / WEIGHTS_FILE, n=2, m=4, axes=axes)
        (stage / SEMI_PLAN_FILE).write_text(json.dumps(plan, indent=1, default=str))
        if alg_cache is not None:
            alg_cache.save(stage / ALGS_FILE)
        if target.exists():
            shutil.rmtree(target)
        stage.rename(target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return target


def read_plan(folder: str | Path) -> dict[str, Any]:
    """The checked ``semi_plan.json`` of an artifact folder (InputError naming the file otherwise)."""
    p = Path(folder) / SEMI_PLAN_FILE
    try:
        plan = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p} does not exist: not a folder written by save_semi_structured") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{p} is not readable JSON ({type(e).__name__}: {e})") from e
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        got = plan.get("format") if isinstance(plan, dict) else type(plan).__name__
        raise InputError(f"{p}: format {got!r}, expected {PLAN_FORMAT!r}")
    layers = plan.get("layers")
    if not isinstance(layers, dict):
        raise InputError(f"{p}: 'layers' must be an object")
    for name, d in layers.items():
        where = f"{p}, layer {name!r}"
        if not isinstance(d, dict) or not isinstance(d.get("routes"), dict):
            raise InputError(f"{where}: entry must be an object with 'routes'")
        for key in ("in_features", "out_features"):
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{where}: {key} must be an int >= 1, got {v!r}")
        for t, r in d["routes"].items():
            if not str(t).isdigit() or int(t) < 1:
                raise InputError(f"{where}: route key {t!r} is not a token count")
            Route.from_dict(r, f"{where}, route {t}")
    return plan


def load_semi_structured(
    folder: str | Path,
    base: nn.Module | Callable[[], nn.Module],
    *,
    device: str | torch.device = "cuda",
    graphs: bool = True,
    kernel: str | None = None,
    max_graphs: int = 8,
) -> Any:
    """Rebuild the 2:4 model of an artifact folder on ``device``, in one call (module docstring).

    ``base``: the original (dense) model or a callable that builds it (modified in place).
    ``graphs``: return a :class:`CudaGraphRunner` around the model (one CUDA graph per input shape,
    captured on first use); False returns the module itself (eager). ``kernel``: override the
    plan's kernel (tests use ``"reference"`` on CPU).
    """
    from graphprune.checkpoint import load_compressed
    from graphprune.runtime.semi_cuda.graphs import CudaGraphRunner
    from graphprune.runtime.semi_cuda.kernels import get_kernel

    root = Path(folder)
    plan = read_plan(root)
    kname = kernel or str(plan.get("kernel", "cusparselt"))
    kern = get_kernel(kname)
    model = base() if callable(base) and not isinstance(base, nn.Module) else base
    if not isinstance(model, nn.Module):
        raise InputError(f"base must be an nn.Module or a callable returning one, got {type(model).__name__}")
    weights = root / WEIGHTS_FILE
    state = load_compressed(weights, device=device)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise InputError(f"{weights} does not match {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, t in state.items():
        if tuple(own[name].shape) != tuple(t.shape):
            raise InputError(f"{weights}, tensor {name!r}: shape {list(t.shape)} does not match the model's {list(own[name].shape)}")
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device)  # buffers outside the state dict (e.g. rotary tables)
    model.eval()
    max_alg = kern.max_alg_id()
    for name, d in plan["layers"].items():
        where = f"{root / SEMI_PLAN_FILE}, layer {name!r}"
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise InputError(f"{where}: the base model has no such module: wrong base constructor?") from None
        if type(lin) is not nn.Linear or (lin.out_features, lin.in_features) != (d["out_features"], d["in_features"]):
            raise InputError(f"{where}: expected nn.Linear {d['in_features']}->{d['out_features']}, found {lin!r}")
        routes: dict[int, Route] = {}
        for t, r in d["routes"].items():
            route = Route.from_dict(r, f"{where}, route {t}")
            if route.form == "sparse" and max_alg is not None and route.alg_id > max_alg:
                log.warning("%s: alg_id %d is beyond this machine's %d; using 0", where, route.alg_id, max_alg)
                route = Route("sparse", 0, route.ratio)
            routes[int(t)] = route
        w: Tensor = lin.weight.detach()
        new = SemiSparseLinear(w, None if lin.bias is None else lin.bias.detach(), routes=routes, kernel=kname)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    if not graphs:
        return model
    return CudaGraphRunner(model, max_graphs=max_graphs, name=f"semi-structured model {root}")


def plan_summary(plan: Mapping[str, Any]) -> dict[str, int]:
    """Counts of layers per route kind: ``{"layers", "sparse_routes", "dense_routes"}``."""
    out = {"layers": 0, "sparse_routes": 0, "dense_routes": 0}
    for d in plan.get("layers", {}).values():
        out["layers"] += 1
        for r in d.get("routes", {}).values():
            out["sparse_routes" if r.get("form") == "sparse" else "dense_routes"] += 1
    return out
