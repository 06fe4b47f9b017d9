"""The README's Guarantees section, held to the code.

- "Nothing in a model file runs": every call that can unpickle or load code lives in one of the
  reviewed, trust-gated functions below (an AST scan of the package); the behaviour is tested with
  real payloads in tests/io/test_pt2.py, tests/io/test_loaders.py and tests/test_cli_outputs.py.
- "An output folder changes as a whole, or not at all": the README's list of owned names is
  ``io.staging.OUTPUT_NAMES``; the behaviour is tested in tests/io/test_staging.py and
  tests/test_cli_outputs.py.
- "Every failure is one line and an exit code": the README's table is ``errors.EXIT_CODES``; every
  code is produced by a test in tests/test_cli_errors.py, tests/test_cli_outputs.py and the fuzz tests.
"""

import ast
import re
from pathlib import Path

from graphprune.errors import EXIT_CODES
from graphprune.io.staging import OUTPUT_NAMES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SECTION = README[README.index("## Guarantees"):]
SECTION = SECTION[: SECTION.index("\n## ", 3)]

# (module path, function) -> why it may call a loader that can run code from a file
REVIEWED = {
    ("graphprune/io/pt2.py", "_unpickle"): "weights_only=True first; weights_only=False only when trust is True",
    ("graphprune/io/pt2.py", "_payloads"): "pickled payloads only after `if not trust: raise`",
    ("graphprune/io/loaders.py", "_load_pickle"): "weights_only=True first; full unpickler only with trust",
    ("graphprune/io/loaders.py", "_load_legacy_pt2"): "torch.export.load only after `if not trust: raise`",
    ("graphprune/io/loaders.py", "_load_torchscript"): "torch.jit.load after _check_torchscript_code",
}
RISKY = {"load", "loads", "_pickle_load_obj", "Unpickler"}


def _risky_calls():
    for path in sorted((ROOT / "graphprune").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                owner = ast.unparse(node.func.value)
                if node.func.attr in RISKY and owner.split(".")[0] in ("torch", "pickle", "jit", "export"):
                    yield str(path.relative_to(ROOT)), func.name, ast.unparse(node)


def test_code_loading_calls_are_only_in_reviewed_trust_gated_functions():
    found = list(_risky_calls())
    assert found, "the scan finds nothing: it is broken"
    for module, function, call in found:
        safe_load = "weights_only=True" in call
        assert safe_load or (module, function) in REVIEWED, f"{module}:{function}: {call}"


def test_readme_exit_code_table_is_errors_exit_codes():
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", SECTION, flags=re.M))
    assert {int(k): v for k, v in rows.items()} == EXIT_CODES


def test_readme_names_the_output_names():
    sentence = SECTION[SECTION.index("The names graphprune owns"):]
    sentence = sentence[: sentence.index(". ")]
    assert set(re.findall(r"`([^`]+)`", sentence)) == set(OUTPUT_NAMES)
