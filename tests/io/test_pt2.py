"""The .pt2 reader runs nothing from the file: pickles are refused (or loaded weights_only), graph
targets must be operators and attribute names plain; a clean archive loads as torch would load it."""

import zipfile

import pytest
import torch
from torch import nn

from graphprune.errors import InputError
from graphprune.io.loaders import load_model
from graphprune.io.pt2 import read_pt2
from tests.io.hostile_files import HOSTILE, clean_entries, clean_pt2, hostile_pt2, mlp, prefix, write_entries


def test_clean_archive_loads_like_torch(tmp_path):
    path = clean_pt2(tmp_path / "m.pt2")
    ours = read_pt2(path)
    theirs = torch.export.load(str(path))
    x = torch.randn(2, 16)  # the export is static: batch 2
    torch.testing.assert_close(ours.program.module()(x), theirs.module()(x), rtol=0, atol=0)
    torch.testing.assert_close(ours.program.module()(x), mlp()(x), rtol=0, atol=0)
    (args, kwargs) = ours.example_inputs
    assert kwargs == {} and args[0].shape == (2, 16)
    assert read_pt2(path, sample_inputs=False).example_inputs is None


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / "marker"
    path = hostile_pt2(tmp_path, kind, marker)
    with pytest.raises(InputError) as ei:
        load_model(path).model(torch.randn(2, 16))
    assert str(path) in str(ei.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["sample_inputs_pickle", "weight_use_pickle", "legacy_weights_pickle", "injected_parameter_name"])
def test_torch_export_load_would_run_the_payload(tmp_path, kind):
    """The payloads are real: torch's own loader (what graphprune used before) runs them."""
    marker = tmp_path / "marker"
    path = hostile_pt2(tmp_path, kind, marker)
    try:
        ep = torch.export.load(str(path))
        ep.module()(torch.randn(2, 16))
    except Exception:
        pass
    assert marker.exists()


def test_refusal_says_what_to_do(tmp_path):
    path = hostile_pt2(tmp_path, "sample_inputs_pickle", tmp_path / "marker")
    with pytest.raises(InputError, match="--input-shape.*--trust-pickle"):
        load_model(path)
    # with shapes given, the stored example inputs are not read at all
    loaded = load_model(path, input_shapes=["2,16"])
    assert loaded.example_inputs[0].shape == (2, 16) and not (tmp_path / "marker").exists()
    path = hostile_pt2(tmp_path, "weight_use_pickle", tmp_path / "marker")
    with pytest.raises(InputError, match="'0.weight' is stored as a pickle.*--trust-pickle"):
        load_model(path)


def test_trust_pickle_unpickles_on_request(tmp_path):
    marker = tmp_path / "marker"
    path = hostile_pt2(tmp_path, "sample_inputs_pickle", marker)
    with pytest.raises(InputError):  # the payload returns a file object, not example inputs
        load_model(path, trust_pickle=True)
    assert marker.exists()


def test_code_is_refused_even_with_trust_pickle(tmp_path):
    for kind in ("injected_parameter_name", "python_call_target", "compiled_code"):
        marker = tmp_path / "marker"
        with pytest.raises(InputError):
            load_model(hostile_pt2(tmp_path, kind, marker), trust_pickle=True)
        assert not marker.exists()


def _bomb(tmp_path, inflated: int, real: int):
    """A .pt2-shaped zip whose one deflated entry declares ``inflated`` bytes (``real`` zeros stored)."""
    entries = clean_entries()
    path = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
        z.writestr(prefix(entries) + "data/weights/weight_9", bytes(real), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    if inflated != real:  # patch the declared size in the local header and the central directory
        raw = bytearray(path.read_bytes())
        name = (prefix(entries) + "data/weights/weight_9").encode()
        for sig, name_at, size_at in ((b"PK\x03\x04", 30, 22), (b"PK\x01\x02", 46, 24)):
            pos = raw.find(sig)
            while pos != -1:
                if raw[pos + name_at: pos + name_at + len(name)] == name:
                    raw[pos + size_at: pos + size_at + 4] = inflated.to_bytes(4, "little")
                pos = raw.find(sig, pos + 4)
        path.write_bytes(bytes(raw))
    return path


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    real = _bomb(tmp_path, 80 << 20, 80 << 20)  # 80 MiB of zeros in well under 1 MiB
    assert real.stat().st_size < 1 << 20
    with pytest.raises(InputError, match="zip bomb"):
        load_model(real)
    declared = _bomb(tmp_path, (2 << 30) - 1, 2 << 20)  # 2 MB stored, 2 GiB declared
    with pytest.raises(InputError, match="zip bomb"):
        load_model(declared)


def test_archive_larger_than_memory_is_refused(tmp_path, monkeypatch):
    import graphprune.io.files as files

    path = clean_pt2(tmp_path / "m.pt2")
    monkeypatch.setattr(files, "available_memory", lambda: 1000)
    with pytest.raises(InputError, match="more than the .* of memory available"):
        load_model(path)


def test_corrupt_program_is_one_line(tmp_path):
    entries = clean_entries()
    entries[prefix(entries) + "models/model.json"] = b'{"graph_module": {"graph": {"nodes": "nope"}}}'
    with pytest.raises(InputError) as ei:
        load_model(write_entries(tmp_path / "bad.pt2", entries))
    assert "\n" not in str(ei.value)


def test_large_programs_are_written_by_torch_after_a_disk_check(tmp_path, monkeypatch):
    """Beyond IN_MEMORY_BYTES the archive is not built in memory (no second copy of the weights): the free
    disk space is checked first (a full disk is an OutputError), then torch writes the file."""
    import shutil
    from collections import namedtuple

    import graphprune.io.pt2 as pt2
    from graphprune.errors import OutputError

    model = nn.Linear(64, 64)
    program = torch.export.export(model, (torch.randn(2, 64),))
    monkeypatch.setattr(pt2, "IN_MEMORY_BYTES", 100)  # this model's 16 KiB count as large
    import graphprune.io.files as files

    def in_memory(*args, **kwargs):
        raise AssertionError("the archive was built in memory")

    monkeypatch.setattr(files, "atomic_write_bytes", in_memory)
    pt2.write_pt2(tmp_path / "m.pt2", program)
    assert torch.equal(torch.export.load(str(tmp_path / "m.pt2")).state_dict["weight"], model.weight)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(OutputError):
        pt2.write_pt2(tmp_path / "full.pt2", program)
    assert not (tmp_path / "full.pt2").exists()
