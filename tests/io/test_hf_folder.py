"""A Hugging Face save_pretrained folder as the model input: loaded without running folder code or unpickling."""

import json

import pytest
import torch

from graphprune.cli import main
from graphprune.errors import InputError, UnsupportedModelError
from graphprune.io.loaders import load_model

transformers = pytest.importorskip("transformers")


def _tiny_bert(folder):
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128, vocab_size=500)
    model = transformers.BertModel(config).eval()
    model.save_pretrained(str(folder))
    return model


def test_folder_loads_the_saved_weights_and_compiles(tmp_path, capsys):
    model = _tiny_bert(tmp_path / "bert")
    loaded = load_model(tmp_path / "bert")
    assert loaded.kind == "hf" and type(loaded.model) is type(model)
    (ids,) = loaded.example_inputs
    assert ids.shape == (1, 16) and ids.dtype == torch.int64 and int(ids.max()) < 500
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).last_hidden_state, model(ids).last_hidden_state, rtol=0, atol=0)
    assert main(["compile", str(tmp_path / "bert"), "-o", str(tmp_path / "out")]) == 0
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["audit"]["ok"] and rep["parity"]["ok"] and rep["counts"]["pruned"] == 7
    assert main(["compile", str(tmp_path / "bert"), "-o", str(tmp_path / "bert")]) == 7  # the input folder itself


def test_folder_bad_inputs(tmp_path):
    _tiny_bert(tmp_path / "bert")
    weights = tmp_path / "bert" / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])  # truncated: a copy that did not finish
    with pytest.raises(InputError, match="transformers could not load it: SafetensorError"):
        load_model(tmp_path / "bert")
    weights.write_bytes(whole)
    (tmp_path / "bert" / "model.safetensors").rename(tmp_path / "bert" / "pytorch_model.bin")
    with pytest.raises(InputError, match="pickled weights only .*--trust-pickle"):
        load_model(tmp_path / "bert")
    (tmp_path / "bert" / "pytorch_model.bin").unlink()
    with pytest.raises(InputError, match="no weights"):
        load_model(tmp_path / "bert")
    cfg = json.loads((tmp_path / "bert" / "config.json").read_text())
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModel": "modeling_evil.Evil"}}))
    (tmp_path / "bert" / "modeling_evil.py").write_text("open('MARKER', 'w').write('ran')\n")
    with pytest.raises(UnsupportedModelError, match="never runs code from a model folder"):
        load_model(tmp_path / "bert")
    assert not (tmp_path / "MARKER").exists()
    (tmp_path / "bert" / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot be read as JSON"):
        load_model(tmp_path / "bert")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="directory without config.json"):
        load_model(tmp_path / "empty")
