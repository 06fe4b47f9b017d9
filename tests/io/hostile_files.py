"""Crafted model files for the trust tests: a clean ``.pt2`` and variants whose contents run code.

Every payload writes ``marker`` (a path) when it runs; no payload does anything else. The
variants are built by rewriting the zip entries of a clean archive, the way an attacker would.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

Entries = dict[str, bytes]


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appears iff the pickle ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def read_entries(path: Path) -> Entries:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def write_entries(path: Path, entries: Entries) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def prefix(entries: Entries) -> str:
    return next(n for n in entries if n.endswith("archive_format"))[: -len("archive_format")]


def _json(entries: Entries, name: str) -> dict:
    return json.loads(entries[prefix(entries) + name])


def _put_json(entries: Entries, name: str, obj: dict) -> None:
    entries[prefix(entries) + name] = json.dumps(obj).encode()


# ---- variants: each takes the clean entries and the marker path ----------------------------------------
def sample_inputs_pickle(e: Entries, marker: str) -> Entries:
    """torch.export.load falls back to weights_only=False for the example inputs."""
    e[prefix(e) + "data/sample_inputs/model.pt"] = pickled(Payload(marker))
    return e


def weight_use_pickle(e: Entries, marker: str) -> Entries:
    """A weight marked ``use_pickle``: torch.export.load unpickles it with weights_only=False."""
    cfg = _json(e, "data/weights/model_weights_config.json")
    meta = cfg["config"]["0.weight"]
    meta["use_pickle"] = True
    e[prefix(e) + "data/weights/" + meta["path_name"]] = pickled(Payload(marker))
    _put_json(e, "data/weights/model_weights_config.json", cfg)
    return e


def legacy_weights_pickle(e: Entries, marker: str) -> Entries:
    """A legacy ``data/weights/model.pt``: torch.export.load unpickles it when weights_only fails."""
    e[prefix(e) + "data/weights/model.pt"] = pickled(Payload(marker))
    return e


def opaque_constant(e: Entries, marker: str) -> Entries:
    """An ``opaque_obj_`` constant: torch.export.load calls pickle.loads on it."""
    import pickle

    cfg = _json(e, "data/constants/model_constants_config.json")
    cfg["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
    _put_json(e, "data/constants/model_constants_config.json", cfg)
    e[prefix(e) + "data/constants/opaque_obj_0"] = pickle.dumps(Payload(marker))
    return e


def injected_parameter_name(e: Entries, marker: str) -> Entries:
    """No pickle at all: a parameter name that FX pastes into generated code (runs on forward)."""
    evil = f'0.x",open("{marker}","w"))or getattr(self,"x'
    assert "." not in marker, "the name is split on dots"
    cfg = _json(e, "data/weights/model_weights_config.json")
    cfg["config"][evil] = cfg["config"].pop("0.weight")
    _put_json(e, "data/weights/model_weights_config.json", cfg)
    prog = e[prefix(e) + "models/model.json"].decode()
    e[prefix(e) + "models/model.json"] = prog.replace('"parameter_name": "0.weight"', '"parameter_name": ' + json.dumps(evil)).encode()
    return e


def python_call_target(e: Entries, marker: str) -> Entries:
    """A graph node whose target is a plain Python function reachable from ``torch`` (``os.system``)."""
    prog = _json(e, "models/model.json")
    node = prog["graph_module"]["graph"]["nodes"][1]
    node["target"] = "torch.os.system"
    _put_json(e, "models/model.json", prog)
    return e


def file_op_target(e: Entries, marker: str) -> Entries:
    """An ATen operator that writes files (aten.save)."""
    prog = _json(e, "models/model.json")
    prog["graph_module"]["graph"]["nodes"][1]["target"] = "torch.ops.aten.save.default"
    _put_json(e, "models/model.json", prog)
    return e


def compiled_code(e: Entries, marker: str) -> Entries:
    """An AOTInductor shared library: loading it runs native code."""
    e[prefix(e) + "data/aotinductor/model/model.so"] = b"\x7fELF not really"
    return e


HOSTILE: dict[str, Callable[[Entries, str], Entries]] = {
    "sample_inputs_pickle": sample_inputs_pickle,
    "weight_use_pickle": weight_use_pickle,
    "legacy_weights_pickle": legacy_weights_pickle,
    "opaque_constant": opaque_constant,
    "injected_parameter_name": injected_parameter_name,
    "python_call_target": python_call_target,
    "file_op_target": file_op_target,
    "compiled_code": compiled_code,
}


_CLEAN: dict[str, Entries] = {}


def clean_entries() -> Entries:
    """The entries of a clean archive (exported once per process: exports take seconds)."""
    if "m" not in _CLEAN:
        buf = io.BytesIO()
        torch.export.save(torch.export.export(mlp(), (torch.randn(2, 16),)), buf)
        with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
            _CLEAN["m"] = {i.filename: z.read(i) for i in z.infolist()}
    return dict(_CLEAN["m"])


def clean_pt2(path: Path) -> Path:
    return write_entries(path, clean_entries())


def hostile_pt2(folder: Path, kind: str, marker: Path) -> Path:
    """``folder/KIND.pt2``: the clean archive rewritten by ``HOSTILE[kind]`` with ``marker`` as payload."""
    return write_entries(folder / f"{kind}.pt2", HOSTILE[kind](clean_entries(), str(marker)))


# ---- TorchScript: restricted code, but it can write files, also from __setstate__ inside torch.jit.load ----
class SavesInForward(nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.path = marker
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        torch.ops.aten.save(x, self.path)
        return self.fc(x)


class SavesOnLoad(nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.path = marker
        self.w = torch.ones(16)

    def forward(self, x):
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor]:
        return (self.path, self.w)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor]) -> None:
        torch.ops.aten.save(state[1], state[0])
        self.path = state[0]
        self.w = state[1]
        self.training = False


def hostile_torchscript(folder: Path, kind: str, marker: Path) -> Path:
    cls = {"forward": SavesInForward, "setstate": SavesOnLoad}[kind]
    path = folder / f"ts_{kind}.pt"
    torch.jit.save(torch.jit.script(cls(str(marker))), str(path))
    return path
