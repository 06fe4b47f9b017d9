"""The output folder changes as a whole or not at all (io.staging), and files respect the umask."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from graphprune.errors import ConfigError, OutputError
from graphprune.io.files import atomic_write_text
from graphprune.io.staging import FAILED_REPORT, OUTPUT_NAMES, check_output_target, staged_output


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, float]]:
    """Every entry under ``folder`` (hidden ones included) with its bytes, mode and mtime."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mode, p.stat().st_mtime)
        for p in sorted(folder.rglob("*"))
    }


def leftovers(parent: Path) -> list[str]:
    """Staging, backup and temporary entries anywhere under ``parent``."""
    return sorted(str(p.relative_to(parent)) for p in parent.rglob("*") if "graphprune-" in p.name)


def test_commit_replaces_the_set_and_keeps_other_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("model.onnx", "pruned.pt2", "report.json", FAILED_REPORT):
        (out / name).write_text(f"old {name}")
    (out / "notes.txt").write_text("mine")
    with staged_output(out) as st:
        atomic_write_text(st.file("model.onnx"), "new onnx")
        atomic_write_text(st.file("report.json"), "new report")
        assert not (out / "model.onnx").read_text().startswith("new")  # nothing visible before the commit
    assert (out / "model.onnx").read_text() == "new onnx"
    assert (out / "report.json").read_text() == "new report"
    assert not (out / "pruned.pt2").exists()  # an earlier run's file this run did not write
    assert not (out / FAILED_REPORT).exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_leaves_the_target_exactly_as_it_was(tmp_path, exc):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("old")
    (out / "report.json").write_text("old report")
    before = snapshot(out)
    with pytest.raises(type(exc)):
        with staged_output(out) as st:
            atomic_write_text(st.file("model.onnx"), "half-done")
            raise exc
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_failed_run_creates_no_folders(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError):
        with staged_output(target) as st:
            atomic_write_text(st.file("report.json"), "x")
            raise RuntimeError("late failure")
    assert list(tmp_path.iterdir()) == []


def test_failure_with_a_report_writes_report_failed_json_only(tmp_path):
    class Report:
        def to_json(self):
            return '{"failed": true}'

    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("old")
    err = OutputError("validation failed")
    err.report = Report()
    with pytest.raises(OutputError):
        with staged_output(out) as st:
            atomic_write_text(st.file("model.onnx"), "new")
            raise err
    assert err.failed_report == out / FAILED_REPORT
    assert (out / FAILED_REPORT).read_text() == '{"failed": true}'
    assert (out / "model.onnx").read_text() == "old"


def test_stale_staging_folder_of_a_killed_run_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".out.graphprune-stage-{pid}-abcd"
    stale.mkdir()
    (stale / "model.onnx").write_text("from a SIGKILLed run")
    alive = tmp_path / f".out.graphprune-stage-{os.getpid()}-live"
    alive.mkdir()  # a concurrent run of a live process is left alone
    stale_tmp = tmp_path / "out"
    stale_tmp.mkdir()
    (stale_tmp / f".graphprune-stage-{pid}-efgh").mkdir()  # staged inside an existing target
    (stale_tmp / f".graphprune-old-{pid}-ijkl").mkdir()
    (stale_tmp / f".report.json.graphprune-tmp-{pid}-xyz.json").write_text("half")
    (stale_tmp / ".model.tmp-k2j4.onnx").write_text("half, written by graphprune 0.1")
    with staged_output(tmp_path / "out") as st:
        atomic_write_text(st.file("report.json"), "{}")
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in stale_tmp.iterdir()) == ["report.json"]


def test_a_failing_move_puts_the_earlier_files_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("old onnx")
    (out / "report.json").write_text("old report")
    before = snapshot(out)
    real_rename = os.rename
    calls = []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 4:  # two moved out, one new moved in, the second new move fails
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(OutputError, match="disk is full"):
        with staged_output(out) as st:
            atomic_write_text(st.file("model.onnx"), "new onnx")
            atomic_write_text(st.file("report.json"), "new report")
    monkeypatch.setattr(os, "rename", real_rename)
    assert {k: v[0] for k, v in snapshot(out).items()} == {k: v[0] for k, v in before.items()}
    assert leftovers(tmp_path) == []


def test_files_and_folders_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with staged_output(tmp_path / "out") as st:
            atomic_write_text(st.file("report.json"), "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "report.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750


def test_an_existing_target_is_staged_inside_itself(tmp_path):
    """Same file system as the target even when the target is a link to a folder elsewhere."""
    real = tmp_path / "elsewhere" / "real"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    with staged_output(tmp_path / "link") as st:
        assert st.path.parent.resolve() == real.resolve()
        atomic_write_text(st.file("report.json"), "{}")
    assert (real / "report.json").read_text() == "{}" and (tmp_path / "link").is_symlink()
    assert leftovers(tmp_path) == []


def test_nested_stage_for_the_same_target_is_reused(tmp_path):
    out = tmp_path / "out"
    with staged_output(out) as outer:
        with staged_output(out) as inner:
            assert inner is outer
            atomic_write_text(inner.file("report.json"), "{}")
        assert not out.exists()  # the inner block does not commit
        atomic_write_text(outer.file("bench.json"), "{}")
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "report.json"]


def test_output_that_resolves_to_an_input_is_refused(tmp_path):
    src = tmp_path / "model.pt2"
    src.write_bytes(b"model")
    with pytest.raises(OutputError, match="is the input"):
        check_output_target(src, inputs=[src])
    with pytest.raises(OutputError, match="is the input"):
        check_output_target(tmp_path / "." / "model.pt2", inputs=[src])
    out = tmp_path / "out"
    out.mkdir()
    os.link(src, out / "bench.json")  # whatever its name: a hard link to the input among the outputs
    with pytest.raises(OutputError, match="overwrite the input"):
        check_output_target(out, inputs=[src])
    assert src.read_bytes() == b"model"


def test_bad_targets(tmp_path):
    with pytest.raises(ConfigError, match="empty"):
        check_output_target("")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        check_output_target(f)
    with pytest.raises(OutputError, match="not a folder"):
        check_output_target(f / "sub")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="dangling"):
        check_output_target(tmp_path / "dangling")


def test_output_names_are_registered(tmp_path):
    with staged_output(tmp_path / "out") as st:
        with pytest.raises(ValueError, match="OUTPUT_NAMES"):
            st.file("random.bin")
    assert {"model.onnx", "pruned.pt2", "report.json", "bench.json", "bench.png", "dense.onnx"} <= OUTPUT_NAMES


def test_atomic_write_turns_a_full_disk_into_output_error(tmp_path):
    from graphprune.io.files import atomic_write

    def full(p):
        p.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match=r"cannot write .*report.json: the disk is full"):
        atomic_write(tmp_path / "report.json", full)
    assert list(tmp_path.iterdir()) == []
