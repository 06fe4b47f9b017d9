"""The package's import graph: no cycles, and no import from a lower layer to a higher one.

Every ``import`` / ``from ... import`` in the package counts, at module level and inside functions
(a lazy import is still a dependency); imports under ``if TYPE_CHECKING:`` count too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import graphprune

ROOT = Path(graphprune.__file__).parent

# lowest first (the README's Layout table); a module may import modules of its own layer or of a lower one
LAYERS: list[tuple[str, ...]] = [
    ("errors", "config", "selector", "_module_tensors", "io"),
    ("report", "sparsity", "capture", "layers"),
    ("analysis", "runtime", "plan", "checkpoint"),
    ("structured",),
    ("passes",),
    ("training",),
    ("api",),
    ("backend", "bench"),
    ("cli", "__main__", "__init__"),
]


def _module_names() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = pkg[: len(pkg) - node.level + 1] if node.level > 1 else pkg
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
                base = "graphprune." + base if base else "graphprune"
            else:
                base = node.module or ""
            # ``from pkg import name``: the submodule ``pkg.name`` where there is one, else ``pkg`` itself
            targets = [f"{base}.{a.name}" if _short(f"{base}.{a.name}") in known else base for a in node.names]
        for t in targets:
            if not t.startswith("graphprune"):
                continue
            mod = _short(t)
            # the longest known module that the target names
            while mod and mod not in known and "." in mod:
                mod = mod.rsplit(".", 1)[0]
            if mod in known and mod != name:
                found.add(mod)
    return found


def _short(dotted: str) -> str:
    return dotted[len("graphprune.") :] if dotted != "graphprune" else "__init__"


def _graph() -> dict[str, set[str]]:
    mods = _module_names()
    known = set(mods)
    return {n: _imports(n, p, known) for n, p in mods.items()}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"graphprune.{module} is in no layer of tests/test_architecture.py: place its package there")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    for name in _graph():
        _layer(name)


def test_no_module_import_cycles():
    assert _cycles(_graph()) == []


def test_no_package_import_cycles():
    pkg: dict[str, set[str]] = defaultdict(set)
    for a, deps in _graph().items():
        for b in deps:
            if a.split(".")[0] != b.split(".")[0]:
                pkg[a.split(".")[0]].add(b.split(".")[0])
    assert _cycles(dict(pkg)) == []


def test_no_upward_imports():
    upward = [
        f"graphprune.{a} -> graphprune.{b}"
        for a, deps in sorted(_graph().items())
        for b in sorted(deps)
        if _layer(b) > _layer(a)
    ]
    assert upward == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    # the graph reader itself: an import inside a function counts
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from graphprune.api import compile\n    return compile\n")
    assert _imports("x", src, {"api", "x"}) == {"api"}
