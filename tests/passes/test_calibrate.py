"""The calibrate pass (compile's calibrated masks), plans applied by compile, and the accuracy budget."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import graphprune.passes.all  # noqa: F401  (registers every pass)
from graphprune._module_tensors import get_tensor as get_param
from graphprune.analysis.decide import decide
from graphprune.analysis.find_sites import find_sites
from graphprune.capture import capture
from graphprune.config import CompileConfig, SemiStructured, Unstructured
from graphprune.errors import ConfigError, InputError, ValidationError
from graphprune.passes.base import PassContext, run_pass, run_stages, stage
from graphprune.passes.calibrate import (
    BudgetOptions,
    CalibrateOptions,
    CalibrateStage,
    CompileData,
    PlanOptions,
    choose_method,
    fit_accuracy_budget,
    layer_errors,
    targets_of,
)
from graphprune.plan import Plan
from graphprune.runtime.fidelity import measure_fidelity
from graphprune.sparsity.calibrated import reconstruction_error
from graphprune.sparsity.metrics import check_nm
from graphprune.training.oneshot import prune_oneshot


class Net(nn.Module):
    """Two residual blocks of Linear layers (grouped by block like a transformer) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(32, 64)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)) for _ in range(2)])
        self.head = nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.head(h)


def build(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Net().eval()


MIX = torch.randn(32, 32, generator=torch.Generator().manual_seed(0)) * 0.4 + torch.eye(32)


def batches(n: int = 6, seed: int = 1, rows: int = 48) -> list[tuple[torch.Tensor]]:
    """Correlated inputs, one distribution for every seed (held-out batches come from it too)."""
    g = torch.Generator().manual_seed(seed)
    mix = MIX
    return [((torch.randn(rows, 32, generator=g) @ mix) * 2,) for _ in range(n)]


EXAMPLE = (torch.randn(4, 32),)


def compile_ctx(
    model: nn.Module, config: CompileConfig, inputs: tuple[torch.Tensor, ...] = EXAMPLE, method: str = "fx"
) -> PassContext:
    """What compile's capture / find_sites / decide stages leave in the context (api.py does the same)."""
    ctx = PassContext(inputs, config=config)
    cap = capture(model, inputs, methods=(method,))  # type: ignore[arg-type]  # compile tries export first; fx is faster
    ctx.capture = cap
    for site in find_sites(cap).sites:
        ctx.sites[site.param] = site
        d, p = decide(site, config)
        ctx.decisions[site.param] = d
        if p is not None:
            ctx.patterns[site.param] = p
    ctx.report.decisions = list(ctx.decisions.values())
    return ctx


def with_data(ctx: PassContext, calibration: list, evaluation: list | None = None) -> PassContext:
    """What the calibration-data stage leaves for the later stages."""
    ctx.artifacts["calibration"] = CompileData("sparsegpt", calibration, evaluation or [], "eval")
    return ctx


def run_calibrate(
    model: nn.Module, config: CompileConfig, opts: CalibrateOptions, data: list, permute: object = None
) -> tuple[nn.Module, PassContext]:
    work = copy.deepcopy(model)
    ctx = with_data(compile_ctx(work, config), data)
    name = "compute-masks" if opts.method == "magnitude" else "calibrate"
    st = stage(name) if name == "compute-masks" else stage(name, CalibrateStage(options=opts, permute=permute))  # type: ignore[arg-type]
    work = run_pass(st, work, ctx)
    return work, ctx


CFG = CompileConfig(pattern=(SemiStructured(),))


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_calibrated_compile_equals_prune_oneshot(method: str) -> None:
    """One implementation: the pass and prune_oneshot give the same masks and weights on the same data."""
    model, data = build(), batches()
    work, ctx = run_calibrate(model, CFG, CalibrateOptions(method=method), data)  # type: ignore[arg-type]
    ref = copy.deepcopy(model)
    plan = prune_oneshot(ref, data, method=method)  # type: ignore[arg-type]
    assert set(ctx.masks) == set(plan.sites) == {
        "inp.weight", "blocks.0.0.weight", "blocks.0.2.weight", "blocks.1.0.weight", "blocks.1.2.weight", "head.weight"
    }
    for name, site in plan.sites.items():
        assert torch.equal(ctx.masks[name], site.mask), name
        assert torch.equal(get_param(work, name), get_param(ref, name)), name
        assert check_nm(ctx.masks[name], 2, 4, axis=1).ok and ctx.masks[name].float().mean() == 0.5
        d = ctx.decisions[name]
        assert d.zeros == int((get_param(work, name) == 0).sum()) >= d.numel // 2
        assert d.kept_magnitude is not None and 0.5 < d.kept_magnitude < 1
    rec = ctx.report.passes[-1]
    assert rec.name == "calibrate" and rec.details["method"] == method and rec.details["batches"] == 6
    assert rec.details["calibrated"] == 6 and rec.details["fallback"] == {}


@torch.no_grad()
def test_later_passes_run_unchanged_and_layer_error_is_exact() -> None:
    model, data = build(), batches()
    config = CompileConfig(pattern=(SemiStructured(),), form="masked")
    work, ctx = run_calibrate(model, config, CalibrateOptions(), data)
    x = EXAMPLE[0]
    calibrated_out = work(x)
    masked = run_pass(stage("apply-masks"), copy.deepcopy(work), ctx)
    torch.testing.assert_close(masked(x), calibrated_out, rtol=0, atol=0)
    folded = run_pass(stage("fold-masks"), masked, ctx)  # checks masked == folded itself
    torch.testing.assert_close(folded(x), calibrated_out, rtol=0, atol=0)
    for name in ctx.masks:
        assert check_nm(get_param(folded, name), 2, 4, axis=1).ok
    # the first layer sees the model inputs themselves: its error is ||W X - W' X|| / ||W X|| on them
    rows = torch.cat([b[0] for b in data])
    want = reconstruction_error(model.inp.weight, work.inp.weight, rows)
    rec = next(p for p in ctx.report.passes if p.name == "calibrate")
    errs = {e.param: e for e in layer_errors(rec.details)}
    assert errs["inp.weight"].output_error == pytest.approx(want, rel=1e-4)
    assert errs["inp.weight"].rows == 6 * 48 and errs["inp.weight"].method == "sparsegpt"
    assert all(0 < e.output_error < 1 for e in errs.values())


@torch.no_grad()
def test_calibrated_beats_magnitude_on_held_out_fidelity() -> None:
    model, data, held = build(), batches(8), batches(4, seed=7)  # 384 calibration rows > K = 128
    mag = copy.deepcopy(model)
    ctx = compile_ctx(mag, CFG)
    run_stages([stage("compute-masks"), stage("fold-masks")], mag, ctx)
    sgpt, _ = run_calibrate(model, CFG, CalibrateOptions(), data)
    f_mag = measure_fidelity(model, mag, held)
    f_sgpt = measure_fidelity(model, sgpt, held)
    assert f_sgpt.outputs[0].rel_l2 < 0.7 * f_mag.outputs[0].rel_l2, (f_sgpt.summary(), f_mag.summary())
    assert f_sgpt.mean_cosine > f_mag.mean_cosine


def test_fallback_for_functional_weights_and_no_magnitude_in_calibrate() -> None:
    model = build()
    with pytest.raises(ConfigError, match="method 'magnitude' is the compute-masks stage"):
        run_pass(stage("calibrate", CalibrateStage(options=CalibrateOptions(method="magnitude"))), model, compile_ctx(model, CFG))
    with pytest.raises(ConfigError, match="calibrated masks need calibration data"):
        run_pass(stage("calibrate", CalibrateStage()), model, compile_ctx(model, CFG))

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(32, 32)
            self.w = nn.Parameter(torch.randn(32, 16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) @ self.w

    torch.manual_seed(0)
    f = Functional().eval()
    work, ctx = run_calibrate(f, CFG, CalibrateOptions(), batches(3))
    rec = ctx.report.passes[-1].details
    assert set(ctx.masks) == {"fc.weight", "w"}
    assert "w" in rec["fallback"] and rec["layers"]["w"]["method"] == "magnitude"
    assert rec["layers"]["fc.weight"]["method"] == "sparsegpt"
    assert check_nm(get_param(work, "w"), 2, 4, axis=0).ok  # K of x @ W is axis 0


def test_calibration_works_on_a_module_walk_capture() -> None:
    model, data = build(), batches(4)
    work = copy.deepcopy(model)
    ctx = compile_ctx(work, CFG, method="walk")
    assert ctx.capture is not None and ctx.capture.method == "walk"
    run_pass(stage("calibrate", CalibrateStage()), work, with_data(ctx, data))
    rec = ctx.report.passes[-1].details
    assert rec["calibrated"] == 6 and not rec["fallback"]
    assert "module walk" in rec["notes"][0]
    ref = copy.deepcopy(model)
    prune_oneshot(ref, data)
    assert all(torch.equal(get_param(work, n), get_param(ref, n)) for n in ctx.masks)


def test_patterns_a_calibrated_method_cannot_compute_and_bad_batches() -> None:
    model = build()
    for pattern in (Unstructured(sparsity=0.5, scope="global"), SemiStructured(method="2d_greedy")):
        cfg = CompileConfig(pattern=(pattern,))
        with pytest.raises(ConfigError, match="method 'sparsegpt'"):
            run_calibrate(model, cfg, CalibrateOptions(), batches(2))
    dense_w = model.inp.weight.detach().clone()
    with pytest.raises(InputError, match=r"calibration batch 1 has inputs .* but the example inputs had"):
        run_calibrate(model, CFG, CalibrateOptions(), [(torch.randn(4, 32),), (torch.randn(4, 32), torch.randn(2))])
    with pytest.raises(InputError, match=r"calibration batch 0: input 'input\[0\]' is float64"):
        run_calibrate(model, CFG, CalibrateOptions(), [(torch.randn(4, 32, dtype=torch.float64),)])
    with pytest.raises(
        InputError,
        match=r"calibration batch 1 \(input\[0\]: float32\[4, 31\]\) has the wrong shape for layer 'inp': it expects 32 input",
    ):  # found by the preflight pass over every batch, before any layer is pruned
        run_calibrate(model, CFG, CalibrateOptions(), [(torch.randn(4, 32),), (torch.randn(4, 31),)])
    with pytest.raises(InputError, match="calibration data is empty"):
        run_calibrate(model, CFG, CalibrateOptions(), [])
    with pytest.raises(InputError, match=r"batch 0: input 'input\[0\]' .* NaN/Inf"):
        run_calibrate(model, CFG, CalibrateOptions(), [(torch.full((4, 32), float("nan")),)])
    assert torch.equal(model.inp.weight, dense_w)  # the caller's model is never touched


def test_options_validate_and_round_trip_through_json() -> None:
    import json

    opts = CalibrateOptions(method="wanda", percdamp=0.05, search="obs", max_batches=3)
    assert CalibrateOptions.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts
    with pytest.raises(ConfigError, match=r"unknown CalibrateOptions field\(s\) \['dampening'\]"):
        CalibrateOptions.from_dict({"dampening": 0.1})
    for bad, field in (
        ({"method": "obs"}, "method"),
        ({"search": "greedy"}, "search"),
        ({"percdamp": -1}, "percdamp"),
        ({"admm_rho": 0}, "admm_rho"),
        ({"admm_growth": 0.5}, "admm_growth"),
        ({"admm_iterations": -1}, "admm_iterations"),
        ({"blocksize": 0}, "blocksize"),
        ({"max_batches": 0}, "max_batches"),
    ):
        with pytest.raises(ConfigError, match=f"CalibrateOptions.{field} must"):
            CalibrateOptions(**bad)  # type: ignore[arg-type]


def test_method_rule() -> None:
    assert choose_method(None, True) == "sparsegpt" and choose_method(None, False) == "magnitude"
    assert choose_method("wanda", True) == "wanda" and choose_method("magnitude", False) == "magnitude"
    with pytest.raises(ConfigError, match=r"method 'sparsegpt' needs calibration data: give --calib SOURCE"):
        choose_method("sparsegpt", False)
    with pytest.raises(ConfigError, match="method must be one of"):
        choose_method("obs", True)


# ---- plans: training -> compile ----------------------------------------------------------------------------


def test_plan_round_trip_training_to_compile(tmp_path: Path) -> None:
    model, data = build(), batches()
    trained = copy.deepcopy(model)
    plan = prune_oneshot(trained, data, method="sparsegpt")
    plan.save(tmp_path / "plan")
    loaded = Plan.load(tmp_path / "plan")
    work = copy.deepcopy(model)
    ctx = compile_ctx(work, CFG)
    work = run_pass(stage("apply-plan", PlanOptions(loaded)), work, ctx)
    for name, site in plan.sites.items():
        assert torch.equal(ctx.masks[name], site.mask)
        assert torch.equal(get_param(work, name), get_param(trained, name))  # SparseGPT values applied
        assert ctx.patterns[name] == SemiStructured()
        assert ctx.decisions[name].pruned and "from plan" in ctx.decisions[name].message
    folded = run_pass(stage("fold-masks"), copy.deepcopy(work), ctx)
    torch.testing.assert_close(folded(EXAMPLE[0]), trained(EXAMPLE[0]), rtol=0, atol=0)


def test_plan_for_another_model_names_the_layer() -> None:
    model = build()
    plan = Plan.from_masks({"blocks.5.0.weight": torch.ones(128, 64, dtype=torch.bool)})
    ctx = compile_ctx(model, CFG)
    def apply(p: Plan) -> None:
        run_pass(stage("apply-plan", PlanOptions(p)), model, ctx)

    with pytest.raises(InputError, match=r"the model lacks: blocks\.5\.0\.weight"):
        apply(plan)
    wrong = Plan.from_masks({"inp.weight": torch.ones(64, 16, dtype=torch.bool)})
    with pytest.raises(InputError, match=r"inp\.weight \(plan \(64, 16\), model \(64, 32\)\)"):
        apply(wrong)
    axis = Plan.from_masks({"inp.weight": torch.ones(64, 32, dtype=torch.bool)}, k_axes={"inp.weight": 0})
    with pytest.raises(InputError, match=r"inp\.weight \(plan K axis 0, compile's 1\)"):
        apply(axis)
    with pytest.raises(InputError, match="no sites"):
        apply(Plan())


def test_plan_with_a_permutation_is_audited_as_unstructured() -> None:
    model = build()
    trained = copy.deepcopy(model)
    plan = prune_oneshot(trained, batches(2), method="wanda", permutation=True, permutation_time_budget_s=0.05)
    ctx = compile_ctx(model, CFG)
    run_pass(stage("apply-plan", PlanOptions(plan)), model, ctx)
    permuted = [s.param for s in plan.sites.values() if s.perm is not None]
    assert permuted and all(isinstance(ctx.patterns[p], Unstructured) for p in permuted)
    assert len(ctx.report.passes[-1].details["notes"]) == len(permuted)


# ---- accuracy budget -------------------------------------------------------------------------------------


def test_budget_leaves_sensitive_layers_dense_and_meets_it() -> None:
    model, data, held = build(), batches(6), batches(3, seed=9)
    ctx = compile_ctx(copy.deepcopy(model), CFG)
    targets = targets_of(ctx)
    loose = fit_accuracy_budget(model, targets, data, held, max_drift=0.5)
    assert loose.dense == [] and loose.sparsity == pytest.approx(0.5) and loose.trials[0]["dense"] == 0
    full_drift = loose.fidelity.drift
    bound = full_drift / 3
    res = fit_accuracy_budget(model, targets, data, held, max_drift=bound)
    assert res.dense and res.fidelity.drift <= bound and res.reason == "accuracy_budget"
    numel = {n: get_param(model, n).numel() for n in targets}
    pruned = [n for n in targets if n not in res.dense]
    assert res.sparsity == pytest.approx(sum(numel[n] for n in pruned) / 2 / sum(numel.values()))
    assert set(res.masks) == set(pruned)
    # the choice is the smallest prefix of the ranking that meets the budget
    k = len(res.dense)
    assert res.dense == [n for n, _ in res.ranking[:k]]
    assert all(t["drift"] > bound for t in res.trials if t["dense"] < k)
    # the pruned model the result describes is what fidelity measured
    again = copy.deepcopy(model)
    with torch.no_grad():
        for n, v in res.values.items():
            get_param(again, n).copy_(v)
    assert measure_fidelity(model, again, held).mean_cosine == pytest.approx(res.fidelity.mean_cosine, abs=1e-12)
    with pytest.raises(ValidationError, match=r"cannot be met by pruning any layer: all 6 pruned drift .* with only .* pruned the drift is"):
        fit_accuracy_budget(model, targets, data, held, max_drift=1e-9)


def test_budget_search_shares_trials_across_budgets() -> None:
    from graphprune.passes.calibrate.budget import BudgetSearch

    model, data, held = build(), batches(6), batches(3, seed=9)
    targets = targets_of(compile_ctx(copy.deepcopy(model), CFG))
    search = BudgetSearch(model, targets, data, held, options=CalibrateOptions(method="wanda"))
    full = search.trials[0]["drift"]
    tight, loose = search.fit(full / 4), search.fit(full / 2)
    runs = len(search.trials)
    again = search.fit(full / 4)
    assert len(search.trials) == runs and again.dense == tight.dense  # no new trial
    assert len(loose.dense) <= len(tight.dense) and tight.fidelity.drift <= full / 4 and loose.fidelity.drift <= full / 2
    assert loose.sparsity >= tight.sparsity


def test_budget_pass_and_bad_budgets() -> None:
    model, data, held = build(), batches(6), batches(3, seed=9)
    work = copy.deepcopy(model)
    ctx = compile_ctx(work, CFG)
    full = fit_accuracy_budget(model, targets_of(ctx), data, held, max_drift=0.9).fidelity.drift
    run_pass(stage("accuracy-budget", BudgetOptions(max_drift=full / 3)), work, with_data(ctx, data, held))
    dense = ctx.report.passes[-1].details["dense"]
    assert dense and all(n not in ctx.patterns and n not in ctx.masks for n in dense)
    assert all("accuracy budget" in ctx.decisions[n].message and not ctx.decisions[n].pruned for n in dense)
    assert measure_fidelity(model, work, held).drift <= full / 3
    for bad in (0, 1, 1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError, match=r"max_drift must be a number in \(0, 1\)"):
            fit_accuracy_budget(model, targets_of(ctx), data, held, max_drift=bad)
    with pytest.raises(ConfigError, match="exactly one accuracy budget"):
        fit_accuracy_budget(model, targets_of(ctx), data, held)
    with pytest.raises(ConfigError, match=r"max_drift must be a number in \(0, 1\)"):
        BudgetOptions(max_drift=2.0)


@torch.no_grad()
def test_permutation_is_searched_on_the_methods_scores() -> None:
    from graphprune.passes.permute_channels import PermuteChannelsConfig
    from graphprune.passes.permute_channels.search import _kept

    model, data = build(), batches(4)
    work = copy.deepcopy(model)
    ctx = compile_ctx(work, CFG)
    rows = torch.cat([b[0] for b in data])
    hidden = torch.nn.functional.gelu(model.blocks[0][0](model.inp(rows)))  # the inputs of blocks.0.2
    run_pass(stage("calibrate", CalibrateStage(permute=PermuteChannelsConfig(time_budget_s=0.05))), work, with_data(ctx, data))
    perm = ctx.report.passes[-1].details["permute"]
    group = next(g for g in perm["groups"] if g["consumers"] == ["blocks.0.2.weight"])
    assert group["permuted"]
    # the search ran on |W|·||x||, not on |W|: its "before" figure is the N:M-kept share of those scores
    scores = model.blocks[0][2].weight.abs() * hidden.norm(dim=0)
    assert group["kept_before"] == pytest.approx(_kept(scores, 2, 4, 1), rel=1e-5)
    assert group["kept_before"] != pytest.approx(_kept(model.blocks[0][2].weight, 2, 4, 1), rel=1e-3)
    assert group["kept_after"] > group["kept_before"]
    for name in ctx.masks:
        assert check_nm(get_param(work, name), 2, 4, axis=1).ok


# ---- the stages api.py runs ---------------------------------------------------------------------------


def calib_source() -> list[tuple[torch.Tensor]]:
    return batches(6)


def eval_source() -> list[tuple[torch.Tensor]]:
    return batches(3, seed=9)


def mini_compile(model: nn.Module, **kw: object) -> tuple[nn.Module, PassContext, object]:
    """The stage list api.compile gets (see the final report), up to fidelity: data -> copy -> capture ->
    find -> decide -> masks -> apply -> fold -> fidelity."""
    from graphprune.passes.calibrate import data_stage, fidelity_stage, mask_stage

    plan = kw.pop("plan", None)
    method = kw.pop("method", None)
    stages = [data_stage(**kw, method=method, plan=plan)]  # type: ignore[arg-type]
    stages += [stage("copy"), stage("capture"), stage("find"), stage("decide")]
    budget = {k: kw[k] for k in ("max_drift", "min_cosine") if k in kw}
    stages.append(mask_stage(method, has_calibration=kw.get("calibration") is not None, plan=plan, **budget))  # type: ignore[arg-type]
    stages += [stage("apply-masks"), stage("fold-masks"), fidelity_stage()]
    ctx = PassContext(EXAMPLE, config=CFG)
    work = run_stages(stages, model, ctx)
    return work, ctx, ctx.artifacts["fidelity"]


def test_stages_end_to_end() -> None:
    model = build()
    here = "tests.passes.test_calibrate"
    work, ctx, fid = mini_compile(model, calibration=f"{here}:calib_source", evaluation=f"{here}:eval_source")
    names = [p.name for p in ctx.report.passes]
    assert names == ["calibration-data", "copy", "capture", "find", "decide", "calibrate", "apply-masks", "fold-masks", "fidelity"]
    d = fid.to_dict()  # type: ignore[attr-defined]
    assert d["source"] == "eval" and d["samples"] == 3 * 48 and len(d["layers"]) == 6 and d["notes"] == []
    assert d["mean_cosine"] == pytest.approx(measure_fidelity(model, work, eval_source()).mean_cosine)
    _, ctx2, fid2 = mini_compile(model)  # no data: magnitude, fidelity on the example inputs (weak)
    assert "compute-masks" in [p.name for p in ctx2.report.passes]  # no data: magnitude
    assert fid2.source == "example inputs" and "weak check" in fid2.notes[0]  # type: ignore[attr-defined]
    _, _, fid3 = mini_compile(model, calibration=f"{here}:calib_source")  # held-back calibration batches
    assert fid3.source == "calibration holdout" and fid3.batches == 1  # type: ignore[attr-defined]
    _, _, fid4 = mini_compile(model, calibration=f"{here}:calib_source", evaluation=f"{here}:calib_source")
    assert fid4.notes[0].startswith("warning: the evaluation data is the calibration data")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="needs calibration data"):
        mini_compile(model, method="sparsegpt")
    with pytest.raises(ConfigError, match="cannot be combined with a saved plan"):
        mini_compile(model, plan=Plan(), max_drift=0.1)
    _, ctx5, fid5 = mini_compile(model, calibration=f"{here}:calib_source", evaluation=f"{here}:eval_source", max_drift=0.5)
    assert "accuracy-budget" in [p.name for p in ctx5.report.passes] and fid5.drift <= 0.5  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"max_drift must be a number in \(0, 1\)"):
        mini_compile(model, calibration=f"{here}:calib_source", max_drift=1.0)
    with pytest.raises(InputError, match="evaluation source .* gave no batches"):
        mini_compile(model, calibration=f"{here}:calib_source", evaluation=[])
