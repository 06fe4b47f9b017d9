"""Pure tensor maths of sparsity masks (no fx / onnx imports): unstructured, N:M (1-D and 2-D),
channel permutation for N:M, and audits. Masks are boolean tensors, ``True`` = keep.

``axis`` is always the weight's reduction axis K (Linear: 1; Conv: 1; HF Conv1D and MatMul B: 0).
"""

from graphprune.sparsity.masks import compute_mask
from graphprune.sparsity.metrics import NMCheck, check_finite, check_nm, kept_magnitude, sparsity_of
from graphprune.sparsity.permutation import PermutationResult, search_permutation
from graphprune.sparsity.semi_structured import nm_mask
from graphprune.sparsity.semi_structured_2d import nm_mask_2d
from graphprune.sparsity.unstructured import global_unstructured_masks, unstructured_mask

__all__ = [
    "NMCheck",
    "PermutationResult",
    "check_finite",
    "check_nm",
    "compute_mask",
    "global_unstructured_masks",
    "kept_magnitude",
    "nm_mask",
    "nm_mask_2d",
    "search_permutation",
    "sparsity_of",
    "unstructured_mask",
]
