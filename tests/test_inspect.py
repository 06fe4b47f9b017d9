"""``inspect`` is compile's stage list stopped after ``decide``: both make the same decisions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphprune
from graphprune import CompileConfig, SkipReason, parse_pattern
from graphprune.api import compile_stages, inspect_model
from models import zoo


class Mixed(nn.Module):
    """A pruned Linear, an embedding tied to the output head, and an int8 Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(32, 16)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 32, bias=False)
        self.head.weight = self.emb.weight
        self.q = nn.Linear(8, 8, bias=False)
        self.q.weight = nn.Parameter(torch.randint(-4, 4, (8, 8), dtype=torch.int8), requires_grad=False)

    def forward(self, ids: torch.Tensor, xq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(torch.relu(self.fc(self.emb(ids)))), self.q(xq)


def _mixed() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return Mixed().eval(), (torch.randint(0, 32, (2, 5)), torch.randint(-3, 3, (2, 8), dtype=torch.int8))


def _decisions(report):
    return [(d.param, d.pruned, d.reason, d.pattern, d.k_axis, d.shape) for d in report.decisions]


CASES = {
    "int8_and_tied": (_mixed, "2:4"),
    "mlp": (lambda: zoo.build("mlp"), "2:4"),
    "k_not_div_4": (lambda: zoo.build("k_not_div_4"), "2:4"),
    "tied_weights": (lambda: zoo.build("tied_weights"), "2:4"),
    "residual_cnn_structured": (lambda: zoo.build("residual_cnn"), "channels:0.5,2:4"),
    "hf_llama_heads": (lambda: zoo.build("hf_llama"), "heads:0.5,ffn:0.5,2:4"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_inspect_and_compile_decide_alike(case, tmp_path):
    build, pattern = CASES[case]
    model, inputs = build()
    config = CompileConfig(pattern=parse_pattern(pattern), export_onnx=False)
    inspected = inspect_model(model, inputs, config)
    compiled = graphprune.compile(model, inputs, config, output_dir=tmp_path).report
    assert _decisions(inspected) == _decisions(compiled)
    assert inspected.structured == compiled.structured


def test_int8_and_tied_weights_get_their_own_reasons():
    model, inputs = _mixed()
    reasons = {d.param: d.reason for d in inspect_model(model, inputs).decisions}
    assert reasons == {"fc.weight": None, "emb.weight": SkipReason.TIED_WEIGHT, "q.weight": SkipReason.NOT_FLOATING}


def test_inspect_is_the_compile_stage_list_stopped_after_decide():
    config = CompileConfig(pattern=parse_pattern("heads:0.5,2:4"), permute=True)
    names = [s.name for s in compile_stages(config)]
    assert names[: names.index("decide") + 1] == ["copy", "structured", "capture", "find", "decide"]
    assert names[names.index("decide") + 1 :] == ["permute", "masks", "rewrite", "rewrite", "fidelity", "export", "audit", "parity", "save"]


def test_inspect_leaves_the_callers_model_alone():
    model, inputs = zoo.build("residual_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inspect_model(model, inputs, CompileConfig(pattern=parse_pattern("channels:0.5")))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
