"""Output folders through the command line: all-or-nothing, never an input, and no code from a model
file in any verb (issue 9). In process except where the process boundary matters (SIGTERM)."""

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import graphprune
from graphprune.cli import main
from graphprune.errors import EXIT_CODES
from tests.io.hostile_files import HOSTILE, hostile_pt2
from tests.io.test_staging import leftovers, snapshot

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc in EXIT_CODES and "Traceback" not in err, err
    return rc, err, out


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One successful compile (2:4 on tests.factories:tiny_mlp), copied by each test that needs it."""
    out = tmp_path_factory.mktemp("first") / "out"
    assert main(["compile", "tests.factories:tiny_mlp", "-o", str(out)]) == 0
    return out


def _copy(first_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    return out


def test_success_writes_one_set_with_umask_modes(first_run):
    assert sorted(p.name for p in first_run.iterdir()) == ["model.onnx", "pruned.pt2", "report.json"]
    mask = os.umask(0)
    os.umask(mask)
    for p in first_run.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p
    assert leftovers(first_run.parent) == []


def test_late_failure_leaves_the_folder_as_it_was(first_run, tmp_path, capsys, monkeypatch):
    """Parity fails after export: the earlier run's files stay, the report goes to report.failed.json."""
    from graphprune.runtime import ort

    out = _copy(first_run, tmp_path)
    before = snapshot(out)
    real = ort.check_parity
    monkeypatch.setattr(ort, "check_parity", lambda *a, **k: dataclasses.replace(real(*a, **k), ok=False))
    rc, err, _ = run(capsys, "compile", "tests.factories:tiny_mlp", "--pattern", "4:8", "-o", out)
    assert rc == 6 and f"(report: {out / 'report.failed.json'})" in err
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != "report.failed.json"} == before
    failed = json.loads((out / "report.failed.json").read_text())
    assert failed["config"]["pattern"][0]["m"] == 8 and failed["parity"]["ok"] is False
    assert leftovers(tmp_path) == []


def test_full_disk_while_saving_is_exit_7_and_changes_nothing(first_run, tmp_path, capsys, monkeypatch):
    import graphprune.io.files as files

    out = _copy(first_run, tmp_path)
    before = snapshot(out)

    def full(path, data):
        raise files.output_error(Path(path), OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(files, "atomic_write_bytes", full)  # what write_pt2 uses for pruned.pt2
    rc, err, _ = run(capsys, "compile", "tests.factories:tiny_mlp", "--pattern", "unstructured:0.5", "-o", out)
    assert rc == 7 and "disk is full" in err
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_a_run_that_writes_fewer_files_removes_the_earlier_ones(first_run, tmp_path, capsys):
    """A TorchScript input gives no pruned.pt2: the earlier run's pruned.pt2 must not stay beside it."""
    out = _copy(first_run, tmp_path)
    torch.manual_seed(0)
    ts = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))), str(ts))
    rc, _, _ = run(capsys, "compile", ts, "--input-shape", "2,16", "-o", out)
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json"]


def test_failed_first_run_leaves_no_folder(tmp_path, capsys):
    rc, _, _ = run(capsys, "compile", "tests.hostile:nan_bias", "-o", tmp_path / "new" / "out")
    assert rc == 5 and list(tmp_path.iterdir()) == []


def test_output_resolving_to_the_input_is_refused_for_compile_and_bench(tmp_path, capsys):
    from tests.io.hostile_files import clean_pt2

    src = clean_pt2(tmp_path / "model.pt2")
    data = src.read_bytes()
    for verb in ("compile", "bench"):
        rc, err, _ = run(capsys, verb, src, "-o", src)
        assert rc == 7 and "is the input" in err
    named = tmp_path / "out"
    named.mkdir()
    for name in ("bench.json", "dense.onnx", "report.json"):
        shutil.copy(src, named / name)
        rc, err, _ = run(capsys, "bench", named / name, "-o", named)
        assert rc == 7 and "overwrite the input" in err
        assert (named / name).read_bytes() == data
    assert src.read_bytes() == data


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_pt2_runs_nothing_in_any_verb(tmp_path, capsys, kind):
    marker = tmp_path / "marker"
    path = hostile_pt2(tmp_path, kind, marker)
    data = path.read_bytes()
    for argv in (["compile", path, "-o", tmp_path / "o"], ["inspect", path], ["bench", path, "-o", tmp_path / "b"],
                 ["audit", path]):
        rc, err, _ = run(capsys, *argv)
        assert rc == 3, (argv, err)
        assert not marker.exists(), argv
    assert path.read_bytes() == data
    assert not (tmp_path / "o").exists() and not (tmp_path / "b").exists()


def test_sigterm_is_a_clean_exit_that_removes_the_staging_folder(first_run, tmp_path):
    out = _copy(first_run, tmp_path)
    before = snapshot(out)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, "-m", "graphprune", "compile", "tests.hostile:slow", "-o", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not leftovers(tmp_path):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated (SIGTERM)" in err
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_a_sigkilled_run_is_cleaned_by_the_next_run(first_run, tmp_path, capsys):
    out = _copy(first_run, tmp_path)
    before = snapshot(out)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, "-m", "graphprune", "compile", "tests.hostile:slow", "-o", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not leftovers(tmp_path):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=60)
    assert leftovers(tmp_path)  # SIGKILL: nothing could clean up
    rc, _, _ = run(capsys, "compile", "tests.hostile:nan_bias", "-o", out)  # the next run, failing or not
    assert rc == 5 and leftovers(tmp_path) == [] and snapshot(out) == before


def test_python_api_takes_a_dict_config_and_stages_its_folder(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    res = graphprune.compile(model, (torch.randn(4, 16),), {"pattern": "unstructured:0.5@global"}, output_dir=tmp_path / "api")
    assert res.ok and res.onnx_path == tmp_path / "api" / "model.onnx" and res.onnx_path.is_file()
    assert res.report.outputs["report"] == str(tmp_path / "api" / "report.json")
    assert leftovers(tmp_path) == []


def test_json_output_survives_a_closed_pipe():
    """`graphprune inspect --json | head`: the reader leaves before the output is written; exit 0, no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "graphprune", "inspect", "tests.factories:tiny_mlp", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # closed before graphprune has even imported torch
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err and "error" not in err
