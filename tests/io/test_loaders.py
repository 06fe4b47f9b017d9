"""Bad and good model inputs: every error names the file and says what to do; nothing is overwritten."""

import zipfile

import pytest
import torch
from torch import nn

from graphprune.errors import ConfigError, InputError
from graphprune.io.loaders import load_model, parse_input_shape


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def test_missing_file_names_it(tmp_path):
    with pytest.raises(InputError, match=r"missing\.pt2 does not exist"):
        load_model(str(tmp_path / "missing.pt2"))


def test_empty_file(tmp_path):
    p = tmp_path / "empty.pt2"
    p.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_model(p)


def test_corrupt_file(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"\x00\x01not a model at all" * 10)
    with pytest.raises(InputError, match="junk.pt"):
        load_model(p)


def test_truncated_pt2(tmp_path):
    m = _mlp()
    good = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(2, 16),)), str(good))
    data = good.read_bytes()
    bad = tmp_path / "trunc.pt2"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="trunc.pt2"):
        load_model(bad)


def test_pt2_loads_with_its_example_inputs(tmp_path):
    m = _mlp()
    x = torch.randn(2, 16)
    p = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(m, (x,)), str(p))
    before = p.read_bytes()
    loaded = load_model(p)
    assert loaded.kind == "pt2"
    assert loaded.example_inputs is not None and loaded.example_inputs[0].shape == (2, 16)
    torch.testing.assert_close(loaded.model(x), m(x))
    assert p.read_bytes() == before


def test_state_dict_is_rejected_with_advice(tmp_path):
    p = tmp_path / "weights.pt"
    torch.save(_mlp().state_dict(), p)
    with pytest.raises(InputError, match="state_dict.*architecture"):
        load_model(p)


def test_pickled_module_needs_trust(tmp_path):
    p = tmp_path / "whole.pt"
    torch.save(_mlp(), p)
    with pytest.raises(InputError, match="--trust-pickle"):
        load_model(p, input_shapes=["2,16"])
    loaded = load_model(p, trust_pickle=True, input_shapes=["2,16"])
    assert loaded.kind == "pickle" and isinstance(loaded.model, nn.Module)


def test_pickled_module_without_shapes(tmp_path):
    p = tmp_path / "whole.pt"
    torch.save(_mlp(), p)
    with pytest.raises(InputError, match="--input-shape"):
        load_model(p, trust_pickle=True)


def test_torchscript(tmp_path):
    p = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(_mlp()), str(p))
    loaded = load_model(p, input_shapes=["2,16"])
    assert loaded.kind == "torchscript"
    assert isinstance(loaded.model, torch.jit.ScriptModule)


def test_factory_and_its_errors():
    loaded = load_model("tests.factories:tiny_mlp")
    assert loaded.kind == "factory" and loaded.example_inputs[0].shape == (4, 16)
    with pytest.raises(InputError, match="cannot import module"):
        load_model("no_such_pkg.mod:build")
    with pytest.raises(InputError, match="no attribute"):
        load_model("tests.factories:nothing_here")
    with pytest.raises(InputError, match="must return"):
        load_model("tests.factories:returns_int")


def test_unknown_zip(tmp_path):
    p = tmp_path / "thing.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(InputError, match="unknown kind"):
        load_model(p)


def test_parse_input_shape():
    t = parse_input_shape("2x16:int64:30522")
    assert t.dtype == torch.int64 and t.shape == (2, 16) and int(t.max()) < 30522
    assert parse_input_shape("1,3,8,8").dtype == torch.float32
    for bad in ("1,a", "0,3", "2:complex"):
        with pytest.raises(ConfigError):
            parse_input_shape(bad)


@pytest.mark.parametrize("kind", ["forward", "setstate"])
def test_torchscript_that_writes_files_is_refused_before_loading(tmp_path, kind):
    from tests.io.hostile_files import hostile_torchscript

    marker = tmp_path / "marker"
    path = hostile_torchscript(tmp_path, kind, marker)
    with pytest.raises(InputError, match="calls 'torch.save'"):
        load_model(path, input_shapes=["2,16"])
    assert not marker.exists()
    try:  # what torch itself does with the file: the code runs (at load for __setstate__)
        torch.jit.load(str(path))(torch.randn(2, 16))
    except Exception:
        pass
    assert marker.exists()


def test_factory_errors_name_the_factory(tmp_path, monkeypatch):
    import sys

    (tmp_path / "gp_bad_syntax.py").write_text("def build(:\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(InputError, match=r"factory gp_bad_syntax:build: importing 'gp_bad_syntax' failed: SyntaxError"):
        load_model("gp_bad_syntax:build")
    with pytest.raises(InputError, match=r"called sys.exit\(0\)"):
        load_model("tests.hostile:exits")
    with pytest.raises(InputError, match="raised RuntimeError: the factory's own bug"):
        load_model("tests.hostile:raises")
