"""One file at a time, safely: atomic writes that respect the umask, and size checks before reading.

- :func:`atomic_write` writes a temporary file beside the destination and renames it over the
  destination, so a reader never sees half a file. The temporary name carries the writer's pid
  (``.NAME.graphprune-tmp-PID-XXXX``); one left by a killed process is removed by the next write
  of the same file. Files get the mode ``open()`` would give them (``0o666`` less the umask), not
  ``mkstemp``'s ``0o600``. An ``OSError`` (full disk, read-only file system) becomes
  :class:`~graphprune.errors.OutputError` naming the file.
- :func:`check_zip_sizes` refuses a zip archive whose entries would inflate to more memory than
  the machine has, or that inflate like a zip bomb, before anything is inflated.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

from graphprune.errors import InputError, OutputError

_TMP_TAG = "graphprune-tmp"
_UMASK_LOCK = threading.Lock()

# A deflated entry that inflates more than this many times over, to more than _BOMB_MIN_BYTES, is a
# zip bomb: torch.export.save and torch.jit.save store tensors uncompressed (ratio 1).
_BOMB_RATIO = 100
_BOMB_MIN_BYTES = 64 << 20


def umask() -> int:
    """The process umask (read without changing it for other threads' file creations)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open()``: ``0o666`` less the umask."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The mode a new directory gets from ``mkdir()``: ``0o777`` less the umask."""
    return 0o777 & ~umask()


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tagged_pid(name: str, tag: str) -> int | None:
    """The pid in a name ``.X.<tag>-<pid>-...`` written by this module, or None."""
    m = re.search(re.escape(tag) + r"-(\d+)-", name)
    return int(m.group(1)) if m else None


def remove_stale_tmp_files(path: Path) -> None:
    """Remove temporary files of ``path`` left by writers that no longer run (e.g. SIGKILL)."""
    try:
        siblings = list(path.parent.glob(f".{glob.escape(path.name)}.{_TMP_TAG}-*"))
    except OSError:
        return
    for p in siblings:
        pid = tagged_pid(p.name, _TMP_TAG)
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            try:
                p.unlink()
            except OSError:
                pass


def output_error(path: Path, e: OSError, what: str = "write") -> OutputError:
    """An :class:`OutputError` for an ``OSError`` met while writing ``path``, saying what to do."""
    hint = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }.get(e.errno or 0, e.strerror or str(e))
    return OutputError(f"cannot {what} {path}: {hint}; free space or choose another output directory with -o")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The temporary file is removed on every exit path; the result gets the umask's mode.
    """
    path = Path(path)
    remove_stale_tmp_files(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_TMP_TAG}-{os.getpid()}-", suffix=path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise output_error(path, e) from e
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise output_error(path, e) from e
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(p: Path) -> None:
        p.write_bytes(data)

    atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    def write(p: Path) -> None:
        p.write_text(text)

    atomic_write(path, write)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_zip_sizes(zf: zipfile.ZipFile, label: str | os.PathLike[str]) -> int:
    """Refuse ``zf`` before inflating anything when its entries would not fit in memory or inflate
    like a zip bomb; returns the total inflated size in bytes."""
    total = 0
    for info in zf.infolist():
        total += info.file_size
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > _BOMB_MIN_BYTES:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > _BOMB_RATIO:
                raise InputError(
                    f"{label}: entry {info.filename!r} inflates {ratio:.0f}x ({info.compress_size} -> "
                    f"{info.file_size} bytes); refused as a zip bomb (torch saves tensors uncompressed)"
                )
    avail = available_memory()
    if avail is not None and total > avail:
        raise InputError(
            f"{label} inflates to {total / 2**30:.2f} GiB, more than the {avail / 2**30:.2f} GiB of memory "
            "available; refused before loading"
        )
    return total
