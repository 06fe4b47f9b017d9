"""The public API is small and pinned; importing graphprune stays light."""

import subprocess
import sys

import graphprune

EXPECTED = {
    "FFN", "Channels", "CompileConfig", "CompileReport", "CompileResult", "ConfigError", "Decision",
    "DependencyError", "GraphPruneError", "Heads", "Hidden", "InputError", "OutputError", "PassError",
    "SemiStructured", "SkipReason", "UnsupportedModelError", "Unstructured", "ValidationError",
    "WeightError", "__version__", "compile", "load", "parse_pattern",
}


def test_all_is_pinned():
    assert set(graphprune.__all__) == EXPECTED
    for name in graphprune.__all__:
        assert hasattr(graphprune, name), name


def test_import_is_light():
    code = (
        "import sys, graphprune; "
        "heavy = [m for m in ('onnxruntime', 'onnx', 'transformers', 'tensorrt', 'onnxscript') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
