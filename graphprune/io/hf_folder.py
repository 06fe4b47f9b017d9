"""A Hugging Face model folder (``save_pretrained``: ``config.json`` + ``*.safetensors``) as a model input.

``graphprune compile path/to/folder`` builds the architecture that ``config.json`` names
(``architectures[0]``, a class transformers ships) and loads the weights with ``from_pretrained``
(``local_files_only``; weights streamed into the model, not loaded twice). What is never done: code
from the folder is never run (``trust_remote_code=False``; a config that needs custom code is
refused), and pickled weights (``pytorch_model.bin``) are refused unless ``--trust-pickle``.

Example inputs: ``--input-shape`` when given; else, from the config, ``input_ids`` of 1 x 16 tokens
below ``vocab_size`` (text models) or ``pixel_values`` of 1 x channels x image_size² (vision models).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphprune.errors import DependencyError, InputError, UnsupportedModelError, is_out_of_memory

__all__ = ["is_hf_folder", "load_hf_folder"]

CONFIG = "config.json"


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def load_hf_folder(path: Path, shaped: tuple[torch.Tensor, ...] | None, trust_pickle: bool) -> tuple[nn.Module, tuple[Any, ...]]:
    """The model of a ``save_pretrained`` folder and its example inputs (module docstring)."""
    try:
        meta = json.loads((path / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path / CONFIG} cannot be read as JSON: {e}") from e
    if not isinstance(meta, dict):
        raise InputError(f"{path / CONFIG} is not a Hugging Face config (a JSON object)")
    if meta.get("auto_map"):
        raise UnsupportedModelError(
            f"{path} needs custom code from the folder (config.json auto_map); graphprune never runs code from a model "
            "folder: load it yourself and pass a factory (package.module:callable)"
        )
    safetensors = sorted(p.name for p in path.glob("*.safetensors"))
    pickled = sorted(p.name for p in path.glob("*.bin"))
    if not safetensors and not pickled:
        raise InputError(f"{path} has a config.json but no weights (*.safetensors); save it with save_pretrained")
    if not safetensors and not trust_pickle:
        raise InputError(
            f"{path} holds pickled weights only ({', '.join(pickled[:3])}); unpickling can run code: convert them to "
            "safetensors (save_pretrained(..., safe_serialization=True)) or pass --trust-pickle"
        )
    try:
        import transformers
    except ImportError as e:
        raise DependencyError(f"{path} is a Hugging Face folder: pip install 'graphprune[hf]'") from e
    archs = [a for a in (meta.get("architectures") or []) if isinstance(a, str)]
    cls = next((getattr(transformers, a) for a in archs if isinstance(getattr(transformers, a, None), type)), None)
    if cls is None:
        if archs:
            raise UnsupportedModelError(f"{path}: transformers {transformers.__version__} has no class {archs[0]} (config.json architectures)")
        cls = transformers.AutoModel
    try:
        model = cls.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, use_safetensors=bool(safetensors),
        )
    except MemoryError:
        raise
    except Exception as e:  # safetensors and transformers raise their own types for a corrupt or mismatched folder
        if is_out_of_memory(e):
            raise
        raise InputError(f"{path}: transformers could not load it: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    model.eval()
    return model, shaped if shaped is not None else _example_inputs(path, model.config)


def _example_inputs(path: Path, config: Any) -> tuple[Any, ...]:
    gen = torch.Generator().manual_seed(0)
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and vocab > 0:
        return (torch.randint(0, vocab, (1, 16), generator=gen),)
    size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
    if isinstance(size, (list, tuple)):
        size = size[0] if size else None
    if isinstance(size, int) and isinstance(channels, int):
        return (torch.randn(1, channels, size, size, generator=gen),)
    raise InputError(f"{path}: cannot tell the example inputs from config.json; give --input-shape (e.g. 1x128:int64:30522)")
