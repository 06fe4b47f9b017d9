"""Where compile's files go: a temporary folder that lives as long as the result; the delta after structured pruning."""

from __future__ import annotations

import gc

import torch

import graphprune
from graphprune import CompileConfig, WeightError, parse_pattern
from graphprune.serialize import load
from models import zoo


def test_default_output_folder_lives_as_long_as_the_result():
    model, inputs = zoo.build("mlp")
    res = graphprune.compile(model, inputs)
    folder = res.output_dir
    assert folder is not None and (folder / "model.onnx").exists() and (folder / "report.json").exists()
    del res
    gc.collect()
    assert not folder.exists()


def test_a_failed_compile_leaves_no_temporary_folder(tmp_path, monkeypatch):
    import tempfile

    made = []
    real = tempfile.TemporaryDirectory

    def spy(*a, **k):
        t = real(*a, **k)
        made.append(t.name)
        return t

    monkeypatch.setattr(tempfile, "TemporaryDirectory", spy)
    model, inputs = zoo.build("mlp")
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    try:
        graphprune.compile(model, inputs)
    except WeightError:
        pass
    assert made and all(not __import__("os").path.exists(p) for p in made)


def test_structured_compile_writes_a_reloadable_delta(tmp_path):
    model, inputs = zoo.build("hf_llama")
    res = graphprune.compile(model, inputs, CompileConfig(pattern=parse_pattern("heads:0.5,ffn:0.5,2:4")), output_dir=tmp_path)
    assert (tmp_path / "delta.json").exists() and (tmp_path / "model.safetensors").exists()
    again = load(tmp_path, lambda: zoo.build("hf_llama")[0]).eval()
    with torch.no_grad():
        want = res.model(*inputs)
        got = again(*inputs)
    want = want.last_hidden_state if hasattr(want, "last_hidden_state") else want
    got = got.last_hidden_state if hasattr(got, "last_hidden_state") else got
    assert torch.equal(want, got)
    # the per-layer table says which layers were shrunk
    shrunk = [d for d in res.report.decisions if d.shrunk_from]
    assert shrunk and all("shrunk" in d.summary for d in shrunk)
