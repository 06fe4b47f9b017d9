"""Calibration / evaluation SOURCES: factories and .npz / .safetensors files, and every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from graphprune.errors import ConfigError, InputError
from graphprune.io.calibration import load_batches, split_sources

REF = (torch.zeros(2, 5, dtype=torch.int64), torch.zeros(2, 5, 3))  # (ids [B, T], features [B, T, 3])
HERE = "tests.io.test_calibration"


def good() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 9, (2, t), generator=g), torch.randn(2, t, 3, generator=g)) for t in (4, 6, 7)]


def single_tensors() -> list[torch.Tensor]:
    return [torch.randn(3, 4) for _ in range(2)]


def returns_none() -> None:
    return None


def returns_empty() -> list[object]:
    return []


def wrong_arity() -> list[tuple[torch.Tensor]]:
    return [good()[0], (torch.zeros(2, 5, dtype=torch.int64),)]  # type: ignore[list-item]


def wrong_dtype() -> list[tuple[torch.Tensor, torch.Tensor]]:
    b = good()
    return [b[0], (b[1][0].to(torch.int32), b[1][1])]


def wrong_ndim() -> list[tuple[torch.Tensor, torch.Tensor]]:
    b = good()
    return [b[0], b[1], (b[2][0], b[2][1][0])]


def with_nan() -> list[tuple[torch.Tensor, torch.Tensor]]:
    b = good()
    b[1][1][0, 0, 0] = float("nan")
    return b


def mapping_batches() -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": torch.zeros(2, 5, dtype=torch.int64)}]


def raises() -> list[object]:
    raise RuntimeError("dataset not found")


NOT_CALLABLE = 3


def test_factory_source() -> None:
    batches = load_batches(f"{HERE}:good", reference=REF)
    assert len(batches) == 3 and all(isinstance(b, tuple) and len(b) == 2 for b in batches)
    assert [b[0].shape[1] for b in batches] == [4, 6, 7]  # sequence length may differ from the example inputs
    one = load_batches(f"{HERE}:single_tensors", reference=(torch.zeros(1, 4),))
    assert len(one) == 2 and len(one[0]) == 1  # a lone tensor is a 1-tuple
    assert len(load_batches(good(), reference=REF, max_batches=2)) == 2  # API: an iterable


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.no_such_module:fn", r"calibration source tests\.no_such_module:fn: cannot import module 'tests\.no_such_module'"),
        (f"{HERE}:missing", r"has no attribute 'missing'"),
        (f"{HERE}:NOT_CALLABLE", r"'NOT_CALLABLE' is a int, not a callable"),
        (f"{HERE}:raises", r"calling raises\(\) failed: RuntimeError: dataset not found"),
        (f"{HERE}:returns_none", r"returned nothing \(None\)"),
        (f"{HERE}:returns_empty", r"gave no batches"),
        (f"{HERE}:wrong_arity", r"calibration batch 1 from .*:wrong_arity has inputs \(input\[0\]: int64\[2, 5\]\) but the example inputs had \(input\[0\]: int64\[2, 5\], input\[1\]: float32\[2, 5, 3\]\)"),
        (f"{HERE}:wrong_dtype", r"calibration batch 1 from .*: input 'input\[0\]' is int32\[2, 6\], in the example inputs it is int64\[2, 5\] \(wrong dtype\)"),
        (f"{HERE}:wrong_ndim", r"calibration batch 2 from .*: input 'input\[1\]' is float32\[7, 3\], in the example inputs it is float32\[2, 5, 3\] \(wrong shape\)"),
        (f"{HERE}:with_nan", r"calibration batch 1 from .*: input 'input\[1\]' \(float32\[2, 6, 3\]\) has 1 NaN/Inf value"),
        (f"{HERE}:mapping_batches", r"calibration batch 0 from .* is a mapping \(input_ids\) but the example inputs are positional"),
        ("nonsense", r"expected package\.module:callable or a file ending in \.safetensors or \.npz"),
    ],
)
def test_bad_factory_sources(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_batches(spec, reference=REF)


def save_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return str(path)


def test_file_sources_are_batched_by_samples(tmp_path: Path) -> None:
    ids = np.arange(10 * 5, dtype=np.int64).reshape(10, 5)
    feats = np.random.default_rng(0).standard_normal((10, 5, 3)).astype(np.float32)
    npz = save_npz(tmp_path / "c.npz", input_0=ids, input_1=feats)
    batches = load_batches(npz, batch_size=4, reference=REF)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.from_numpy(ids))
    positional = tmp_path / "p.npz"
    np.savez(positional, ids, feats)  # numpy's own names arr_0, arr_1
    assert len(load_batches(str(positional), batch_size=5, reference=REF)) == 2
    from safetensors.torch import save_file

    st = tmp_path / "c.safetensors"
    save_file({"input_0": torch.from_numpy(ids), "input_1": torch.from_numpy(feats)}, str(st))
    sb = load_batches(st, batch_size=3, reference=REF, what="evaluation")
    assert len(sb) == 4 and torch.equal(sb[0][1], torch.from_numpy(feats[:3]))


def test_bad_files(tmp_path: Path) -> None:
    ids = np.zeros((4, 5), dtype=np.int64)
    feats = np.zeros((4, 5, 3), dtype=np.float32)
    with pytest.raises(InputError, match=r"must hold one array per positional input, named input_0, input_1 .*missing: input_1"):
        load_batches(save_npz(tmp_path / "a.npz", input_0=ids), reference=REF)
    with pytest.raises(InputError, match=r"extra: labels"):
        load_batches(save_npz(tmp_path / "b.npz", input_0=ids, input_1=feats, labels=ids), reference=REF)
    with pytest.raises(InputError, match=r"first axis counts samples .* input_0: 4, input_1: 3"):
        load_batches(save_npz(tmp_path / "c.npz", input_0=ids, input_1=feats[:3]), reference=REF)
    with pytest.raises(InputError, match=r"batch 0 from .*d\.npz: input 'input\[1\]' is float64\[4, 5, 3\], in the example inputs it is float32"):
        load_batches(save_npz(tmp_path / "d.npz", input_0=ids, input_1=feats.astype(np.float64)), reference=REF)
    bad = feats.copy()
    bad[1, 2, 0] = np.inf
    with pytest.raises(InputError, match=r"NaN/Inf"):
        load_batches(save_npz(tmp_path / "e.npz", input_0=ids, input_1=bad), reference=REF)
    obj = tmp_path / "f.npz"
    np.savez(obj, input_0=np.array([{"a": 1}], dtype=object), input_1=feats)
    with pytest.raises(InputError, match=r"files are data, never code"):  # np.load(allow_pickle=False) refuses it
        load_batches(str(obj), reference=REF)
    with pytest.raises(InputError, match="does not exist"):
        load_batches(str(tmp_path / "none.npz"), reference=REF)
    (tmp_path / "g.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="could not be read as safetensors"):
        load_batches(str(tmp_path / "g.safetensors"), reference=REF)
    with pytest.raises(ConfigError, match="batch size must be an int >= 1"):
        load_batches(f"{HERE}:good", batch_size=0, reference=REF)


def test_split_sources() -> None:
    cal = good() + good() + good() + good()  # 12 batches
    s = split_sources(cal, None, REF)
    assert s.eval_source == "calibration holdout" and len(s.evaluation) == 2 and len(s.calibration) == 10
    assert s.evaluation == [cal[4], cal[9]]  # every 5th batch, not the last ones
    assert "held back" in s.notes[0]
    ev = good()
    s2 = split_sources(cal, ev, REF)
    assert s2.eval_source == "eval" and s2.calibration == cal and s2.evaluation == ev and not s2.notes
    same = split_sources(cal, cal, REF)
    assert same.notes and same.notes[0].startswith("warning: the evaluation data is the calibration data")
    assert split_sources(cal, ev, REF, same_source=True).notes[0].startswith("warning")
    weak = split_sources(cal[:1], None, REF)
    assert weak.eval_source == "example inputs" and weak.evaluation == [REF] and "weak check" in weak.notes[0]
