"""Files from elsewhere and files we write: data, never code; outputs all-or-nothing.

- :mod:`~graphprune.io.loaders`: what the user names (a ``.pt2``, TorchScript, ONNX, a factory, a
  pickle behind the trust flag) becomes a model and example inputs;
- :mod:`~graphprune.io.pt2`: ``.pt2`` archives read without unpickling or running code from them;
- :mod:`~graphprune.io.staging`: the output folder as a transaction (:func:`staged_output`);
- :mod:`~graphprune.io.checks`: finite weights and outputs before any pruning work;
- :mod:`~graphprune.io.files`: atomic, umask-respecting writes; size checks before inflating.

A low layer: it imports only ``errors``, ``config``, torch and onnx.
"""

from __future__ import annotations

from graphprune.io.checks import check_finite
from graphprune.io.files import atomic_write, atomic_write_text
from graphprune.io.loaders import LoadedModel, load_model, parse_input_shape
from graphprune.io.pt2 import read_pt2, write_pt2
from graphprune.io.staging import OUTPUT_NAMES, StagedOutput, check_output_target, staged_output

__all__ = [
    "OUTPUT_NAMES",
    "LoadedModel",
    "StagedOutput",
    "atomic_write",
    "atomic_write_text",
    "check_finite",
    "check_output_target",
    "load_model",
    "parse_input_shape",
    "read_pt2",
    "staged_output",
    "write_pt2",
]
