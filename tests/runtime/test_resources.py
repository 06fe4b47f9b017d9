"""runtime/resources.py: too large for memory, no room on disk; both said before the long stages start."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest
import torch
from torch import nn

import graphprune
from graphprune.errors import InputError, OutputError
from graphprune.runtime import resources

Usage = namedtuple("Usage", "total used free")


def test_weight_bytes_counts_tied_weights_once():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    assert resources.weight_bytes(model) == 10 * 4 * 4
    model.to(torch.bfloat16)
    assert resources.weight_bytes(model) == 10 * 4 * 2


def test_check_memory_says_what_is_needed_and_what_to_do():
    model = nn.Linear(1000, 1000)  # 4.0 MB of weights
    rec = resources.check_memory(model, available=10**9)
    assert rec["weight_bytes"] == 4_004_000 and rec["extra_bytes_needed"] == 2 * 4_004_000  # copy + parity session
    with pytest.raises(InputError, match=r"Linear has 0\.00 GB of weights; compiling it needs about 0\.01 GB more memory "
                       r"but 0\.00 GB is available: free memory, hand the model over \(compile\(\.\.\., copy=False\)"):
        resources.check_memory(model, available=1000)
    assert resources.check_memory(model, copy=False, validate=False, available=1_000_001)["extra_bytes_needed"] == 1_000_000


def test_check_free_space(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**10, 10**10 - 5 * 10**8, 5 * 10**8))
    assert resources.check_free_space(tmp_path / "not" / "yet", 10**8, what="x") == 5 * 10**8
    with pytest.raises(OutputError, match=r"output folder .* has 0\.50 GB free but the ONNX needs 2\.00 GB") as info:
        resources.check_free_space(tmp_path, 2 * 10**9, what="the ONNX")
    assert info.value.exit_code == 7


def test_compile_refuses_before_work_starts(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(64, 64)).eval()
    x = (torch.randn(2, 64),)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(OutputError, match=r"has 0\.00 GB free but the outputs of Sequential \(ONNX weights and pruned\.pt2\)"):
        graphprune.compile(model, x, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing exported, no folder created
    monkeypatch.undo()
    monkeypatch.setattr(resources, "available_memory", lambda: 1000)
    with pytest.raises(InputError, match="Sequential has 0.00 GB of weights; compiling it needs about"):
        graphprune.compile(model, x, output_dir=tmp_path / "out2")
