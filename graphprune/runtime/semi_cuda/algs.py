"""Per-shape algorithm choice for the 2:4 kernel, cached as JSON on disk.

cuSPARSELt offers several algorithm ids per problem, and the default (0) is not always the fastest
(bf16 16384x8192x8192 on an H100: 2.95 ms with 0, 2.25 ms with the searched id). The choice depends
on the problem ``(out N, in K, tokens M, dtype, bias)`` and on the machine, so an :class:`AlgCache`
maps :func:`alg_key` strings to :class:`AlgEntry` records and remembers the environment it was
measured in (:func:`environment`: GPU name, cuSPARSELt and torch versions). A cache file read on
another environment is *stale*: its entries are dropped (``AlgCache.stale`` says why) and searched
again, never trusted.

File format (``alg_cache.json``)::

    {"format": "graphprune.semi-algs/1",
     "env": {"gpu": "NVIDIA H100 80GB HBM3", "cusparselt": "0.8.0", "torch": "2.11.0+cu130"},
     "entries": {"bfloat16|N=11008|K=4096|M=4096|bias=0": {"alg_id": 17, "transpose": true, "ms": 0.38,
                 "default_ms": 0.47, "candidates": {"alg0": 0.47, "alg25": 0.41, "alg17t": 0.38}}}}

``transpose`` is the output layout (:mod:`~graphprune.runtime.semi_cuda.kernels`); ``default_ms`` the
time of algorithm 0 in the untransposed layout (what ``to_sparse_semi_structured`` runs);
``candidates`` every configuration timed (``alg<id>``, ``t`` for the transposed layout).

A file that is not JSON, has another format, or holds an impossible entry (alg_id not an int >= 0,
a key that does not parse) raises :class:`~graphprune.errors.InputError` naming the file and the
entry. Writes are atomic.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from graphprune.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["ALG_CACHE_FORMAT", "AlgCache", "AlgEntry", "alg_key", "environment", "parse_alg_key"]

ALG_CACHE_FORMAT = "graphprune.semi-algs/1"
_KEY = re.compile(r"^(float16|bfloat16|float32|float8_e4m3fn|int8)\|N=(\d+)\|K=(\d+)\|M=(\d+)\|bias=([01])$")


def alg_key(out_features: int, in_features: int, tokens: int, dtype: torch.dtype | str, bias: bool) -> str:
    """The cache key of one problem: ``"float16|N=11008|K=4096|M=4096|bias=0"``."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    return f"{name}|N={int(out_features)}|K={int(in_features)}|M={int(tokens)}|bias={int(bool(bias))}"


def parse_alg_key(key: str) -> tuple[str, int, int, int, bool]:
    """Inverse of :func:`alg_key`: ``(dtype, N, K, M, bias)``; ValueError for anything else."""
    m = _KEY.match(key)
    if not m:
        raise ValueError(f"not an algorithm-cache key: {key!r}")
    return m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)), m.group(5) == "1"


def environment(kernel: str = "cusparselt") -> dict[str, str]:
    """What an algorithm choice depends on besides the problem: the GPU, the kernel library, torch."""
    from graphprune.runtime.semi_cuda.kernels import get_kernel

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return {"gpu": gpu, kernel: get_kernel(kernel).version(), "torch": torch.__version__}


@dataclass
class AlgEntry:
    """The chosen algorithm of one problem and what it measured (ms per product; None: not timed)."""

    alg_id: int
    ms: float | None = None
    default_ms: float | None = None
    candidates: dict[str, float] = field(default_factory=dict)
    transpose: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"alg_id": self.alg_id, "transpose": self.transpose, "ms": self.ms, "default_ms": self.default_ms, "candidates": dict(self.candidates)}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> AlgEntry:
        if not isinstance(d, Mapping):
            raise InputError(f"{where}: entry must be an object, got {type(d).__name__}")
        alg = d.get("alg_id")
        if isinstance(alg, bool) or not isinstance(alg, int) or alg < 0:
            raise InputError(f"{where}: alg_id must be an int >= 0, got {alg!r}")
        nums = {}
        for name in ("ms", "default_ms"):
            v = d.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise InputError(f"{where}: {name} must be a number or null, got {v!r}")
            nums[name] = None if v is None else float(v)
        cands_raw = d.get("candidates", {})
        if not isinstance(cands_raw, Mapping):
            raise InputError(f"{where}: candidates must be an object")
        try:
            cands = {str(k): float(v) for k, v in cands_raw.items()}
        except (TypeError, ValueError) as e:
            raise InputError(f"{where}: candidates must map configurations to ms ({e})") from e
        transpose = d.get("transpose", False)
        if not isinstance(transpose, bool):
            raise InputError(f"{where}: transpose must be true or false, got {transpose!r}")
        return cls(alg_id=alg, ms=nums["ms"], default_ms=nums["default_ms"], candidates=cands, transpose=transpose)


class AlgCache:
    """Problem key -> :class:`AlgEntry`, for one environment (see the module docstring).

    ``path``: where :meth:`save` writes by default (and where :meth:`load` read from).
    ``env``: the environment the entries belong to (default: :func:`environment` of this machine).
    """

    def __init__(self, path: str | Path | None = None, env: Mapping[str, str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.env: dict[str, str] = dict(env) if env is not None else environment()
        self.entries: dict[str, AlgEntry] = {}
        self.stale: str | None = None  # why the entries of a loaded file were dropped
        self.dirty = False

    def get(self, key: str) -> AlgEntry | None:
        return self.entries.get(key)

    def put(self, key: str, entry: AlgEntry) -> None:
        parse_alg_key(key)
        self.entries[key] = entry
        self.dirty = True

    def __len__(self) -> int:
        return len(self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {"format": ALG_CACHE_FORMAT, "env": self.env, "entries": {k: e.to_dict() for k, e in sorted(self.entries.items())}}

    def save(self, path: str | Path | None = None) -> Path:
        """Write the cache (atomically) to ``path`` or to the path it was made with."""
        from graphprune.io.files import atomic_write_text

        target = Path(path) if path is not None else self.path
        if target is None:
            raise InputError("AlgCache.save: no path given and the cache was made without one")
        atomic_write_text(target, json.dumps(self.to_dict(), indent=1))
        self.dirty = False
        return target

    @classmethod
    def load(cls, path: str | Path, env: Mapping[str, str] | None = None, *, missing_ok: bool = True) -> AlgCache:
        """Read ``path``; a missing file gives an empty cache (``missing_ok``), an unreadable or
        malformed one an InputError naming it; entries from another environment are dropped."""
        p = Path(path)
        cache = cls(p, env)
        if not p.exists():
            if missing_ok:
                return cache
            raise InputError(f"algorithm cache {p} does not exist")
        try:
            raw = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"algorithm cache {p} is not readable JSON ({type(e).__name__}: {e}); delete it to search again") from e
        if not isinstance(raw, dict) or raw.get("format") != ALG_CACHE_FORMAT:
            got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise InputError(f"algorithm cache {p}: format {got!r}, expected {ALG_CACHE_FORMAT!r}")
        file_env, entries = raw.get("env"), raw.get("entries")
        if not isinstance(file_env, dict) or not isinstance(entries, dict):
            raise InputError(f"algorithm cache {p}: 'env' and 'entries' must be objects")
        parsed: dict[str, AlgEntry] = {}
        for key, d in entries.items():
            where = f"algorithm cache {p}, entry {key!r}"
            try:
                parse_alg_key(key)
            except ValueError as e:
                raise InputError(f"{where}: {e}") from e
            parsed[key] = AlgEntry.from_dict(d, where)
        if {k: str(v) for k, v in file_env.items()} != cache.env:
            diff = sorted(k for k in set(file_env) | set(cache.env) if str(file_env.get(k)) != cache.env.get(k))
            cache.stale = f"measured on another environment (differs in {', '.join(diff)}): {len(parsed)} entries dropped"
            log.info("algorithm cache %s %s", p, cache.stale)
            return cache
        cache.entries = parsed
        return cache
