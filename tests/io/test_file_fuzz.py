"""File fuzz (issue 9): truncated, bit-flipped, entry-swapped/-added/-dropped .pt2, .onnx and compressed
checkpoints. Whatever the bytes, graphprune ends with a documented exit code and one error line (no
traceback), leaves the input bytes and an existing output folder as they were, and runs no payload.

Bounded: a fixed number of derandomized examples per format, in process."""

import contextlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from graphprune.cli import main
from graphprune.errors import EXIT_CODES, GraphPruneError
from tests.io.hostile_files import Payload, clean_entries, pickled, prefix, write_entries
from tests.io.test_staging import snapshot

FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

BYTE_OPS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=8)),
)
ZIP_OPS = st.one_of(
    BYTE_OPS,
    st.tuples(st.just("swap"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("drop"), st.integers(0, 10**6)),
    st.tuples(st.just("add"), st.sampled_from([
        "data/sample_inputs/model.pt", "data/weights/model.pt", "data/constants/model.pt", "data/weights/weight_0",
        "data/aotinductor/model/model.so", "../../escaped.txt", "extra/notes.json", "models/other.json",
    ]), st.sampled_from(["payload", "garbage", "empty"])),
)


def mutate_bytes(data: bytes, op) -> bytes:
    if op[0] == "truncate":
        return data[: int(len(data) * op[1])]
    raw = bytearray(data)
    for where, bit in op[1]:
        raw[int(where * len(raw))] ^= 1 << bit
    return bytes(raw)


def mutate_zip(entries: dict[str, bytes], op, marker: Path) -> dict[str, bytes] | bytes:
    names = list(entries)
    if op[0] == "swap":
        a, b = names[op[1] % len(names)], names[op[2] % len(names)]
        entries[a], entries[b] = entries[b], entries[a]
    elif op[0] == "drop":
        del entries[names[op[1] % len(names)]]
    elif op[0] == "add":
        entries[prefix(entries) + op[1]] = {
            "payload": pickled(Payload(str(marker))), "garbage": bytes(range(256)) * 3, "empty": b"",
        }[op[2]]
    return entries


def run_cli(*argv) -> int:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    text = err.getvalue()
    assert rc in EXIT_CODES, (argv, rc, text)
    assert "Traceback" not in text and "Traceback" not in out.getvalue(), text
    assert rc == 0 or sum(": error: " in ln for ln in text.splitlines()) == 1, text
    return rc


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("model.onnx", "pruned.pt2", "report.json"):
        (out / name).write_text(f"an earlier run's {name}")
    return tmp_path


def _check_untouched(folder: Path, before) -> None:
    after = snapshot(folder / "out")
    assert {k: v for k, v in after.items() if k != "report.failed.json"} == before


@FUZZ
@given(op=ZIP_OPS)
def test_fuzzed_pt2(folder, op):
    marker = folder / "marker"
    entries = clean_entries()
    path = folder / "m.pt2"
    if op[0] in ("truncate", "flip"):
        path.write_bytes(mutate_bytes(write_entries(folder / "clean.pt2", entries).read_bytes(), op))
    else:
        write_entries(path, mutate_zip(entries, op, marker))
    data, before = path.read_bytes(), snapshot(folder / "out")
    rc = run_cli("compile", path, "--pattern", "bogus", "-o", folder / "out")  # fails on the option: fast
    assert rc == 2
    rc = run_cli("inspect", path)
    event(f"{op[0]}: inspect exit {rc}")
    assert rc in (0, 3)
    assert path.read_bytes() == data and not marker.exists()
    _check_untouched(folder, before)


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype("float32"), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@FUZZ
@given(op=BYTE_OPS)
def test_fuzzed_onnx(folder, op):
    path = folder / "m.onnx"
    path.write_bytes(mutate_bytes(_tiny_onnx(folder / "clean.onnx").read_bytes(), op))
    data, before = path.read_bytes(), snapshot(folder / "out")
    rc = run_cli("compile", path, "--pattern", "2:4", "-o", folder / "out")
    event(f"{op[0]}: compile exit {rc}")
    if rc != 0:
        _check_untouched(folder, before)
    assert rc in (0, 3, 5, 6)
    assert run_cli("audit", path) in (0, 3, 6)
    assert path.read_bytes() == data


@FUZZ
@given(op=BYTE_OPS)
def test_fuzzed_checkpoint(folder, op):
    from graphprune.checkpoint import load_compressed, save_compressed

    torch.manual_seed(0)
    clean = folder / "clean.safetensors"
    save_compressed({"fc.weight": _two_of_four(torch.randn(8, 16)), "fc.bias": torch.randn(8)}, clean)
    path = folder / "ckpt.safetensors"
    path.write_bytes(mutate_bytes(clean.read_bytes(), op))
    data, before = path.read_bytes(), snapshot(folder / "out")
    try:
        load_compressed(path)
    except GraphPruneError:
        pass
    assert run_cli("compile", path, "-o", folder / "out") == 3  # not a model: refused, nothing written
    assert path.read_bytes() == data
    _check_untouched(folder, before)


def _two_of_four(w: torch.Tensor) -> torch.Tensor:
    groups = w.reshape(-1, 4)
    keep = groups.abs().topk(2, dim=1).indices
    out = torch.zeros_like(groups).scatter(1, keep, groups.gather(1, keep))
    return out.reshape(w.shape)


def test_an_added_payload_entry_is_never_run_even_when_the_archive_loads(folder):
    marker = folder / "marker"
    for name in ("data/sample_inputs/model.pt", "data/weights/model.pt"):
        entries = mutate_zip(clean_entries(), ("add", name, "payload"), marker)
        path = write_entries(folder / "m.pt2", entries)
        assert run_cli("inspect", path) == 3
        assert not marker.exists()
    with zipfile.ZipFile(path) as z:
        assert any(n.endswith("data/weights/model.pt") for n in z.namelist())
