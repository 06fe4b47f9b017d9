"""Files a pruned model is saved in, without pickle.

:mod:`.compressed`: the compressed N:M checkpoint (2:4 values + 2-bit indices in safetensors, checked
on load), with its bit packing in :mod:`.nm_codec`; :mod:`.delta`: a structurally pruned model as its
architecture delta (``delta.json``) + ``model.safetensors``, rebuilt from the dense constructor.
"""

from graphprune.checkpoint.compressed import CompressedSummary, TensorRecord, load_compressed, save_compressed
from graphprune.checkpoint.delta import (
    DELTA_FILE,
    WEIGHTS_FILE,
    apply_delta,
    load,
    read_delta,
    save_pretrained,
    save_pruned,
)
from graphprune.checkpoint.nm_codec import pack_indices, unpack_indices

__all__ = [
    "DELTA_FILE",
    "WEIGHTS_FILE",
    "CompressedSummary",
    "TensorRecord",
    "apply_delta",
    "load",
    "load_compressed",
    "pack_indices",
    "read_delta",
    "save_compressed",
    "save_pretrained",
    "save_pruned",
    "unpack_indices",
]
