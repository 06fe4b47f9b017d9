"""Compressed N:M checkpoints: exact round trip, size, dense fallbacks with reasons, corruption."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from torch import nn

from graphprune.checkpoint import load_compressed, pack_indices, save_compressed, unpack_indices
from graphprune.errors import ConfigError, DependencyError, InputError
from graphprune.sparsity import nm_mask


def _nm_model(dtype: torch.dtype = torch.float16, n: int = 2, m: int = 4) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 128), nn.Linear(128, 30), nn.Conv2d(8, 16, 3))
    with torch.no_grad():
        for mod in (model[0], model[2], model[4]):
            mod.weight.mul_(nm_mask(mod.weight, n, m, axis=1))
    return model.to(dtype)


def _equal_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_round_trip_is_exact(tmp_path, dtype):
    model = _nm_model(dtype)
    path = tmp_path / "c.safetensors"
    summary = save_compressed(model, path)
    forms = {r.name: r.form for r in summary.records}
    assert forms["0.weight"] == forms["2.weight"] == forms["4.weight"] == "nm"
    assert forms["3.weight"] == "dense" and forms["0.bias"] == "dense"
    _equal_state(load_compressed(path), model.state_dict())


def test_size_ratio_for_2_4_fp16(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    w = torch.randn(1024, 1024, dtype=torch.float16)
    w = w * nm_mask(w, 2, 4, axis=1)
    summary = save_compressed({"w": w}, tmp_path / "c.safetensors")
    assert summary.ratio == pytest.approx(0.5625)  # values 0.5 + 2-bit metadata 0.0625
    (rec,) = summary.records
    assert rec.stored_bytes == 1024 * 1024 * 2 * 0.5625
    save_file({"w": w}, str(tmp_path / "dense.safetensors"))
    dense = (tmp_path / "dense.safetensors").stat().st_size
    assert summary.file_bytes <= 0.5625 * dense + 1024  # + the JSON header
    assert torch.equal(load_compressed(tmp_path / "c.safetensors")["w"], w)


def test_4_8_and_groups_with_fewer_nonzeros(tmp_path):
    torch.manual_seed(1)
    w = torch.randn(16, 64)
    w = w * nm_mask(w, 4, 8, axis=1)
    w[0, :8] = 0.0  # a group with no nonzeros at all
    w[1, 8:16] = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1.5])  # one nonzero at the last slot
    s = save_compressed({"w": w}, tmp_path / "c.safetensors", n=4, m=8)
    assert s.records[0].form == "nm"
    assert torch.equal(load_compressed(tmp_path / "c.safetensors")["w"], w)


def test_axis_from_module_and_caller(tmp_path):
    torch.manual_seed(0)
    tconv = nn.ConvTranspose2d(16, 8, 2)  # weight [in=16, out=8, 2, 2]: K is axis 0
    with torch.no_grad():
        tconv.weight.mul_(nm_mask(tconv.weight, 2, 4, axis=0))
    s = save_compressed(tconv, tmp_path / "t.safetensors")
    assert {r.name: r.form for r in s.records}["weight"] == "nm"
    w = torch.randn(8, 12)
    w = w * nm_mask(w, 2, 4, axis=0)
    s2 = save_compressed({"w": w}, tmp_path / "a.safetensors", axes={"w": 0})
    assert s2.records[0].form == "nm"
    assert torch.equal(load_compressed(tmp_path / "a.safetensors")["w"], w)


def test_dense_fallbacks_say_why(tmp_path):
    torch.manual_seed(0)
    state = {
        "k30": torch.randn(8, 30),  # K not a multiple of 4
        "dense": torch.randn(8, 32),  # not 2:4
        "ids": torch.arange(6),
        "bias": torch.randn(8),
    }
    s = save_compressed(state, tmp_path / "c.safetensors")
    reasons = {r.name: r.reason for r in s.records}
    assert all(r.form == "dense" for r in s.records)
    assert "not a multiple of M = 4" in reasons["k30"]
    assert "not 2:4" in reasons["dense"] and "groups hold more than 2" in reasons["dense"]
    assert "not floating" in reasons["ids"] and "rank 1" in reasons["bias"]
    _equal_state(load_compressed(tmp_path / "c.safetensors"), state)


def test_tied_weights_stored_once(tmp_path):
    from models.zoo import build

    model, _ = build("tied_weights")
    s = save_compressed(model, tmp_path / "c.safetensors")
    aliases = [r for r in s.records if r.form == "alias"]
    assert [r.name for r in aliases] == ["head.weight"]
    out = load_compressed(tmp_path / "c.safetensors")
    assert out["head.weight"] is out["embed.weight"]
    _equal_state(out, model.state_dict())


def test_pack_indices_round_trip():
    gen = torch.Generator().manual_seed(0)
    for bits in (1, 2, 3, 4, 5):
        idx = torch.randint(0, 2**bits, (1001,), generator=gen)
        packed = pack_indices(idx, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(1001 * bits / 8)
        assert torch.equal(unpack_indices(packed, 1001, bits), idx)
    # 2 bits: four indices per byte, the first in the lowest bits
    assert pack_indices(torch.tensor([1, 2, 3, 0]), 2).tolist() == [1 | 2 << 2 | 3 << 4]


def _header(path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


def test_tampered_tensor_names_the_tensor(tmp_path):
    model = _nm_model()
    path = tmp_path / "c.safetensors"
    save_compressed(model, path)
    n, header = _header(path)
    start, _ = header["2.weight::values"]["data_offsets"]
    raw = bytearray(path.read_bytes())
    raw[8 + n + start + 10] ^= 0xFF
    path.write_bytes(bytes(raw))
    target = _nm_model()
    with torch.no_grad():
        for p in target.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(InputError, match=r"tensor '2\.weight'.*checksum"):
        load_compressed(path, model=target)
    _equal_state(target.state_dict(), before)  # no partial load


def test_tampered_metadata_and_dense_tensor(tmp_path):
    model = _nm_model()
    path = tmp_path / "c.safetensors"
    save_compressed(model, path)
    n, header = _header(path)
    for key, name in (("0.weight::meta", "0.weight"), ("3.weight", "3.weight")):
        raw = bytearray(path.read_bytes())
        start, _ = header[key]["data_offsets"]
        raw[8 + n + start] ^= 0x01
        bad = tmp_path / f"bad-{name}.safetensors"
        bad.write_bytes(bytes(raw))
        with pytest.raises(InputError, match=f"tensor '{name}'"):
            load_compressed(bad)


def test_truncated_and_foreign_files(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "c.safetensors"
    save_compressed(_nm_model(), path)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match="trunc.safetensors"):
        load_compressed(trunc)
    foreign = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(InputError, match="without a graphprune header"):
        load_compressed(foreign)
    with pytest.raises(InputError, match="does not exist"):
        load_compressed(tmp_path / "missing.safetensors")


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="N:M"):
        save_compressed({"w": torch.zeros(4, 4)}, tmp_path / "x", n=4, m=4)
    with pytest.raises(ConfigError, match="'::'"):
        save_compressed({"a::b": torch.zeros(4, 4)}, tmp_path / "x")
    save_compressed({"w": torch.zeros(4, 4)}, tmp_path / "ok.safetensors")
    with pytest.raises(ConfigError, match="to must be"):
        load_compressed(tmp_path / "ok.safetensors", to="csr")  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where there is no CUDA GPU")
def test_semi_structured_needs_cuda(tmp_path):
    save_compressed(_nm_model(), tmp_path / "c.safetensors")
    with pytest.raises(DependencyError, match="CUDA"):
        load_compressed(tmp_path / "c.safetensors", to="semi_structured")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (sm80+) for to_sparse_semi_structured")
def test_semi_structured_on_cuda(tmp_path):
    model = _nm_model(torch.float16)
    save_compressed(model, tmp_path / "c.safetensors")
    out = load_compressed(tmp_path / "c.safetensors", to="semi_structured")
    from torch.sparse import SparseSemiStructuredTensor

    assert isinstance(out["0.weight"], SparseSemiStructuredTensor)
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    ref = torch.nn.functional.linear(x, model[0].weight.cuda())
    from graphprune.runtime.compare import compare_outputs

    assert compare_outputs(ref, torch.nn.functional.linear(x, out["0.weight"])).ok
