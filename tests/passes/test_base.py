"""The pass contract: registry, bound options, the declared-mutation check, errors with their stage, dumps."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

import graphprune.passes.all  # noqa: F401  (registers every pass)
from graphprune.errors import PassError, WeightError
from graphprune.passes.base import (
    MUTATIONS,
    PASSES,
    PassContext,
    PassResult,
    Stage,
    register_pass,
    run_pass,
    run_stages,
    stage,
)


@dataclass(frozen=True)
class _Note:
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text}


def _spec(fn, mutates=()):
    return Stage(dataclasses.replace(next(iter(PASSES.values())), name="t-" + fn.__name__.replace("_", "-"), fn=fn, mutates=frozenset(mutates)))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


def _ctx():
    return PassContext((torch.randn(2, 4),))


def test_every_registered_pass_is_well_formed():
    assert {"copy", "structured", "capture", "find", "decide", "compute-masks", "apply-masks", "fold-masks", "export", "audit", "parity", "save"} <= set(PASSES)
    for name, spec in PASSES.items():
        assert spec.name == name and name == name.lower() and "_" not in name
        assert spec.mutates <= MUTATIONS
        assert spec.summary, f"pass {name} has no docstring"
        assert callable(spec.fn)


def test_stage_checks_the_options_type():
    with pytest.raises(TypeError, match="takes no options"):
        stage("compute-masks", {"x": 1})
    with pytest.raises(TypeError, match="PermuteChannelsConfig"):
        stage("permute-channels", {"time_budget_s": 1})
    assert stage("permute-channels").options == stage("permute-channels", None).options  # defaults bound
    with pytest.raises(KeyError, match="no pass named"):
        stage("no-such-pass")


def test_register_refuses_bad_names_and_kinds():
    with pytest.raises(ValueError, match="kebab-case"):
        register_pass("Bad_Name")
    with pytest.raises(ValueError, match="unknown mutation"):
        register_pass("ok-name", mutates=("everything",))


def test_undeclared_weight_change_is_caught():
    def sneaky(module, options, ctx):
        with torch.no_grad():
            module[0].weight.mul_(0)
        return PassResult(module, modified=True, report=_Note())

    with pytest.raises(PassError, match="changed the module's weights but declares mutates=nothing"):
        run_pass(_spec(sneaky), _model(), _ctx())
    run_pass(_spec(sneaky, ("weights",)), _model(), _ctx())  # declared: fine


def test_undeclared_structure_change_and_wrong_modified_flag_are_caught():
    def grows(module, options, ctx):
        module.add_module("extra", nn.Linear(2, 2))
        return PassResult(module, modified=False, report=_Note())

    with pytest.raises(PassError, match="structure"):
        run_pass(_spec(grows, ("weights",)), _model(), _ctx())
    with pytest.raises(PassError, match="reports modified=False"):
        run_pass(_spec(grows, ("structure",)), _model(), _ctx())


def test_returning_another_module_must_be_declared():
    def swaps(module, options, ctx):
        return PassResult(_model(), modified=True, report=_Note())

    with pytest.raises(PassError, match="returned a different module"):
        run_pass(_spec(swaps, ("weights",)), _model(), _ctx())
    out = run_pass(_spec(swaps, ("module",)), m := _model(), _ctx())
    assert out is not m


def test_failures_name_the_pass_and_keep_user_errors():
    def crashes(module, options, ctx):
        raise RuntimeError("boom")

    def nan(module, options, ctx):
        raise WeightError("layer fc has NaN weights")

    ctx = _ctx()
    ctx.ran.append("copy")
    with pytest.raises(PassError, match=r"pass 't-crashes' failed: RuntimeError: boom; passes that ran before it: copy") as e:
        run_pass(_spec(crashes), _model(), ctx)
    assert isinstance(e.value.__cause__, RuntimeError)
    with pytest.raises(WeightError) as w:
        run_pass(_spec(nan), _model(), ctx)
    assert str(w.value) == "layer fc has NaN weights"  # the message is not edited
    assert w.value.stage == "t-nan" and any("t-nan" in n for n in w.value.__notes__)


def test_runner_records_times_by_stage_label_and_dumps_every_stage(tmp_path):
    def reads(module, options, ctx):
        return PassResult(module, modified=False, report=_Note("read"))

    def scales(module, options, ctx):
        with torch.no_grad():
            module[0].weight.mul_(2)
        return PassResult(module, modified=True, report=_Note("scaled"))

    ctx = _ctx()
    ctx.dump_dir = tmp_path / "dump"
    a, b = _spec(reads), _spec(scales, ("weights",))
    run_stages([a, dataclasses.replace(b, label="work"), dataclasses.replace(b, label="work")], _model(), ctx)
    assert [p.name for p in ctx.report.passes] == ["t-reads", "t-scales", "t-scales"]
    assert set(ctx.report.timings) == {"t-reads", "work"}
    files = sorted(p.name for p in ctx.dump_dir.iterdir())
    assert files == ["00-t-reads.txt", "01-t-scales-after.txt", "01-t-scales-before.txt", "02-t-scales-after.txt", "02-t-scales-before.txt"]
    assert json.loads((ctx.dump_dir / "00-t-reads.txt").read_text()) == {"text": "read"}
    assert "Linear(in_features=4" in (ctx.dump_dir / "01-t-scales-after.txt").read_text()
