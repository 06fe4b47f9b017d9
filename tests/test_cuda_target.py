"""``compile --target cuda``: the 2:4 CUDA artifact as a compile stage, and ``graphprune.load`` of it."""

from __future__ import annotations

import pytest
import torch

import graphprune
from graphprune import CompileConfig, ConfigError, DependencyError
from graphprune.api import compile_stages
from graphprune.cli import main
from graphprune.runtime.compare import compare_outputs
from models import zoo

HAS_SM80 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def test_the_cuda_artifact_is_the_last_stage():
    names = [s.name for s in compile_stages(CompileConfig(target="cuda", token_counts=(4,)))]
    assert names[-2:] == ["save", "cuda-artifact"]
    assert "cuda-artifact" not in [s.name for s in compile_stages(CompileConfig())]


def test_config_checks():
    with pytest.raises(ConfigError, match="form='masked'"):
        CompileConfig(target="cuda", form="masked")
    with pytest.raises(ConfigError, match="cuda_dtype"):
        CompileConfig(cuda_dtype="float32")  # type: ignore[arg-type]
    c = CompileConfig.from_dict({"target": "cuda", "token_counts": [4, 4096], "cuda_dtype": "bfloat16"})
    assert c.token_counts == (4, 4096) and CompileConfig.from_dict(c.to_dict()) == c


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_is_exit_9_before_any_work(tmp_path, capsys):
    model, inputs = zoo.build("mlp")
    with pytest.raises(DependencyError, match="NVIDIA GPU"):
        graphprune.compile(model, inputs, CompileConfig(target="cuda"), output_dir=tmp_path / "api")
    assert not (tmp_path / "api").exists()
    rc = main(["compile", "tests.factories:tiny_mlp", "--target", "cuda", "--shapes", "4", "-o", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert rc == 9 and "NVIDIA GPU" in err and "Traceback" not in err
    assert not (tmp_path / "cli").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_SM80, reason="needs a CUDA GPU (sm80+) for 2:4 kernels")
def test_compile_target_cuda_loads_and_matches_the_folded_model(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)).eval()
    x = torch.randn(4, 512, 1024)
    res = graphprune.compile(model, (x,), CompileConfig(target="cuda", cuda_dtype="bfloat16", token_counts=(4,)), output_dir=tmp_path)
    folder = tmp_path / "cuda"
    assert (folder / "semi_plan.json").exists()
    fast = graphprune.load(folder, lambda: torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)))
    folded = res.model
    with torch.no_grad():
        want = folded(x.cuda().bfloat16())
        got = fast(x.cuda().bfloat16())
    assert compare_outputs(want.float().cpu(), got.float().cpu(), dtype=torch.bfloat16).ok
