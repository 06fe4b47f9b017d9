"""The output folder is a transaction: it changes as a whole, or not at all.

A run writes every file into a fresh staging folder on the target's file system: inside the target
when it exists (``.graphprune-stage-PID-XXXX``), else beside it (``.TARGET.graphprune-stage-PID-XXXX``,
renamed into place by the commit). Only when the run has passed every check does
:meth:`StagedOutput.commit` replace the target's graphprune files as a set: files of an earlier run
that this run did not write are removed, so the folder never holds two runs' files. The names
graphprune owns in an output folder are :data:`OUTPUT_NAMES`; nothing else in the folder is touched.

- a failed run (an exception, KeyboardInterrupt, or SIGTERM turned into an exception by the CLI)
  removes its staging folder and leaves the target exactly as it was; its report, if any, goes to
  :data:`FAILED_REPORT` through :func:`write_failed_report`;
- a staging folder left by a killed process (SIGKILL) is removed by the next run beside it;
- a target that does not exist is created only by a successful commit, so failed runs leave no
  empty folders behind;
- an output location that resolves to an input file (whatever its name) is refused before
  anything is written (:func:`check_output_target`).

The commit moves the earlier run's files into a backup folder, moves the new files in, then
removes the backup; if a move fails, the earlier files are put back.

Nesting: :func:`staged_output` reuses the stage that an enclosing :func:`staged_output` opened for
the same target (``bench`` stages its folder, then calls ``compile`` for the same folder): the
inner block writes into the outer stage and the outer block commits.
"""

from __future__ import annotations

import contextvars
import glob
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from graphprune.errors import ConfigError, OutputError
from graphprune.io.files import atomic_write_text, dir_mode, output_error, pid_alive, remove_stale_tmp_files, tagged_pid

__all__ = [
    "FAILED_REPORT",
    "OUTPUT_NAMES",
    "StagedOutput",
    "check_output_target",
    "output_folder",
    "staged_output",
    "write_failed_report",
]

FAILED_REPORT = "report.failed.json"

OUTPUT_NAMES: frozenset[str] = frozenset({
    "model.onnx",  # compile: the pruned ONNX
    "model.onnx.data",  # its external data (models over ~1.8 GB)
    "pruned.pt2",  # compile: the pruned model, torch.export.save
    "report.json",  # compile: every decision and measurement
    "delta.json",  # compile with a structured pattern: the architecture delta (graphprune.load)
    "model.safetensors",  # ... and the pruned weights beside it
    "dense.onnx",  # bench --runtime ort/tensorrt: the dense ONNX timed against model.onnx
    "dense.onnx.data",
    "bench.json",  # bench: timings
    "bench.png",  # bench: chart
    FAILED_REPORT,  # the report of a failed run (removed by the next successful one)
    "cuda",  # compile --target cuda: the loadable 2:4 CUDA artifact (a folder: weights, semi_plan.json, alg_cache.json)
})

_STAGE_TAG = "graphprune-stage"
_BACKUP_TAG = "graphprune-old"

_ACTIVE: contextvars.ContextVar[tuple[StagedOutput, ...]] = contextvars.ContextVar("graphprune_stages", default=())


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def output_folder(text: str) -> Path:
    """An ``-o`` argument: a folder path, never empty text (``Path("")`` would be the current folder)."""
    if not str(text).strip():
        raise ConfigError("the output folder is empty text; give a folder with -o (e.g. -o out/model)")
    return Path(text)


def check_output_target(
    target: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str]] = (), option: str = "-o"
) -> Path:
    """Refuse an output folder that is empty text, not a folder, unwritable, or would overwrite an input.

    ``inputs``: the files the run reads (the model, its external data, a config file). The target
    is refused when it *is* one of them, or when a name graphprune writes there (:data:`OUTPUT_NAMES`)
    is one of them (also through a link). Returns the target as a Path.
    """
    if str(target).strip() == "":
        raise ConfigError(f"the output folder is empty text; give a folder with {option} (e.g. {option} out/model)")
    out = Path(target)
    for src in (Path(p) for p in inputs):
        if not src.exists():
            continue
        if _same(out, src) if out.exists() else out.resolve() == src.resolve():
            raise OutputError(f"output {out} is the input {src}; choose another {option} folder")
        for name in OUTPUT_NAMES:
            if (out / name).exists() and _same(out / name, src):
                raise OutputError(f"output {out} would overwrite the input {src} (as {name}); choose another {option} folder")
    if out.is_symlink() and not out.exists():
        raise OutputError(f"{option} {out} is a dangling symbolic link; give a folder")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} {out} exists and is not a folder; give a folder")
    anchor = out if out.exists() else _existing_ancestor(out)
    if anchor is None or not anchor.is_dir():
        raise OutputError(f"{option} {out} cannot be created: {anchor} is not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {out} is not writable: no write permission on {anchor}")
    return out


def _existing_ancestor(p: Path) -> Path | None:
    p = p.absolute()
    for parent in (p, *p.parents):
        if parent.exists():
            return parent
    return None


def _remove_stale(target: Path) -> None:
    """Remove staging/backup folders of ``target`` (inside it, or beside it) whose process is gone."""
    places = [(target.parent, f".{target.name}.")]
    if target.is_dir():
        places.append((target, "."))
    for folder, lead in places:
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for p in entries:
            for tag in (_STAGE_TAG, _BACKUP_TAG):
                pid = tagged_pid(p.name, tag)
                if pid is not None and p.name.startswith(f"{lead}{tag}-") and not pid_alive(pid):
                    shutil.rmtree(p, ignore_errors=True)


class StagedOutput:
    """One run's output folder: write into :attr:`path`, record :meth:`final` paths, then commit.

    Use :func:`staged_output` (a context manager) rather than calling :meth:`open`/:meth:`commit`/
    :meth:`discard` by hand.
    """

    def __init__(self, target: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str]] = ()):
        self.target = check_output_target(target, inputs=inputs)
        self._path: Path | None = None
        self._created: list[Path] = []

    @property
    def path(self) -> Path:
        """The staging folder (exists between :meth:`open` and commit/discard)."""
        if self._path is None:
            raise RuntimeError("StagedOutput used before open()")
        return self._path

    def file(self, name: str) -> Path:
        """Where to write the output ``name`` (one of :data:`OUTPUT_NAMES`) during the run."""
        if name not in OUTPUT_NAMES:
            raise ValueError(f"{name!r} is not a graphprune output name; add it to OUTPUT_NAMES")
        return self.path / name

    def final(self, name: str) -> Path:
        """Where ``name`` will be once the run is committed (what reports should name)."""
        if name not in OUTPUT_NAMES:
            raise ValueError(f"{name!r} is not a graphprune output name; add it to OUTPUT_NAMES")
        return self.target / name

    def open(self) -> StagedOutput:
        """Create the staging folder: inside the target when it exists (same file system even when the
        target is a link to another one), else beside it (then the commit renames it into place)."""
        target = self.target.absolute()
        home = target if target.is_dir() else target.parent
        missing = [p for p in (home, *home.parents) if not p.exists()]
        try:
            for p in reversed(missing):
                p.mkdir()
                self._created.append(p)
            _remove_stale(target)
            prefix = f".{_STAGE_TAG}-" if home == target else f".{target.name}.{_STAGE_TAG}-"
            self._path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=home))
        except OSError as e:
            self._remove_created()
            raise output_error(self.target, e, "create the output folder") from e
        return self

    def _remove_created(self) -> None:
        for p in reversed(self._created):
            try:
                p.rmdir()
            except OSError:
                break
        self._created = []

    def discard(self) -> None:
        """Remove the staging folder (and folders this run created for it); the target is untouched."""
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None
        self._remove_created()

    def written(self) -> list[str]:
        """The output names this run wrote (files, and the folders among :data:`OUTPUT_NAMES`)."""
        return sorted(p.name for p in self.path.iterdir() if p.name in OUTPUT_NAMES and (p.is_file() or p.is_dir()))

    def commit(self) -> None:
        """Replace the target's graphprune files by this run's, as a set; remove the staging folder."""
        stage = self.path
        new = self.written()
        for p in stage.iterdir():  # leftovers of writers (temporary files), never part of a result
            if p.name not in new:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        target = self.target
        try:
            if not target.exists() and not target.is_symlink():
                os.chmod(stage, dir_mode())
                os.rename(stage, target)
                self._path = None
                self._created = []
                return
            self._swap(stage, target, new)
            self._remove_stale_tmp_files(target)
        except OSError as e:
            raise output_error(target, e, "replace the files in") from e
        finally:
            if self._path is not None:
                shutil.rmtree(self._path, ignore_errors=True)
                self._path = None
        self._created = []

    def _remove_stale_tmp_files(self, target: Path) -> None:
        """Temporary files of killed writers in the target: ours (dead pid) and those of graphprune < 0.2
        (``.model.tmp-XXXX.onnx``, no pid: every such name is a graphprune temporary)."""
        for name in OUTPUT_NAMES:
            remove_stale_tmp_files(target / name)
            stem, suffix = os.path.splitext(name)
            for p in target.glob(f".{glob.escape(stem)}.tmp-*{glob.escape(suffix)}"):
                p.unlink(missing_ok=True)

    def _swap(self, stage: Path, target: Path, new: list[str]) -> None:
        old = [n for n in sorted(OUTPUT_NAMES) if (target / n).exists() or (target / n).is_symlink()]
        backup = Path(tempfile.mkdtemp(prefix=f".{_BACKUP_TAG}-{os.getpid()}-", dir=target))
        moved_out: list[str] = []
        moved_in: list[str] = []
        try:
            for n in old:
                os.rename(target / n, backup / n)
                moved_out.append(n)
            for n in new:
                os.rename(stage / n, target / n)
                moved_in.append(n)
        except BaseException:
            for n in moved_in:
                try:
                    if (target / n).is_dir() and not (target / n).is_symlink():
                        shutil.rmtree(target / n)
                    else:
                        os.unlink(target / n)
                except OSError:
                    pass
            for n in moved_out:
                try:
                    os.rename(backup / n, target / n)
                except OSError:
                    pass
            raise
        finally:
            shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def staged_output(
    target: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str]] = ()
) -> Iterator[StagedOutput]:
    """Stage a run's outputs for ``target``: committed when the block ends normally, discarded when it
    raises (anything, KeyboardInterrupt included). An enclosing block staging the same target is
    reused (it commits)."""
    want = Path(target).absolute()
    for outer in reversed(_ACTIVE.get()):
        if outer.target.absolute() == want:
            check_output_target(target, inputs=inputs)
            yield outer
            return
    stage = StagedOutput(target, inputs=inputs).open()
    token = _ACTIVE.set((*_ACTIVE.get(), stage))
    try:
        yield stage
    except BaseException as e:
        _ACTIVE.reset(token)
        stage.discard()
        _record_failure(e, stage.target)
        raise
    _ACTIVE.reset(token)
    try:
        stage.commit()
    finally:
        stage.discard()


def _record_failure(e: BaseException, target: Path) -> None:
    """A failed run that carries its report (``e.report``) leaves it in ``TARGET/report.failed.json``
    (``e.failed_report`` says where); writing it must not hide the error itself."""
    report = getattr(e, "report", None)
    if report is None or not hasattr(report, "to_json") or getattr(e, "failed_report", None) is not None:
        return
    try:
        e.failed_report = write_failed_report(target, report.to_json())  # type: ignore[attr-defined]
    except Exception:
        pass


def write_failed_report(target: str | os.PathLike[str], text: str) -> Path:
    """Write a failed run's report to ``TARGET/report.failed.json``; every other file is left as it was."""
    out = Path(target)
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = out / FAILED_REPORT
        atomic_write_text(path, text)
    except OSError as e:
        raise output_error(out / FAILED_REPORT, e) from e
    return path

