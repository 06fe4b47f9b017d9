"""Files from elsewhere and files we write.

- :mod:`~graphprune.io.loaders`: what the user names (a ``.pt2``, TorchScript, ONNX, a factory, a
  pickle behind the trust flag) becomes a model and example inputs;
- :mod:`~graphprune.io.files`: atomic writes of one file.

This is a low layer: it imports only ``errors``, ``config``, torch and onnx.
"""

from __future__ import annotations

from graphprune.io.files import atomic_write, atomic_write_text
from graphprune.io.loaders import LoadedModel, load_model, parse_input_shape

__all__ = ["LoadedModel", "atomic_write", "atomic_write_text", "load_model", "parse_input_shape"]
