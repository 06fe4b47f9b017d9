"""The site data model: one prunable weight found in a captured graph.

A site is keyed by its parameter fqn (``encoder.layer.0.attention.self.query.weight``). Its
*reduction axis K* is the axis TensorRT groups N:M along:

- Linear / Gemm weight ``[out, in]``: K = 1 (input features)
- HF GPT-2 ``Conv1D`` weight ``[in, out]`` (used via addmm(bias, x, W)): K = 0
- ``x @ W`` with a parameter ``W`` of shape ``[K, N]`` (MatMul B): K = 0
- Conv weight ``[out, in/groups, *kernel]``: K = 1 (input channels per group; N:M groups run
  along axis 1 for each (out, kh, kw))
- ConvTranspose weight ``[in, out/groups, *kernel]``: K = 0 (the input channels)
- MultiheadAttention ``in_proj_weight`` ``[3E, E]``: K = 1
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Site:
    param: str  # parameter fqn
    module: str  # owning module fqn ("" for the root)
    module_type: str  # e.g. "torch.nn.modules.linear.Linear"
    op: str  # linear, conv1d, conv2d, conv3d, conv_transpose1d/2d/3d, hf_conv1d, matmul, mha_in_proj
    shape: tuple[int, ...]
    k_axis: int
    groups: int = 1
    flops: int = 0  # 2 * MACs for the example inputs (0 where unknown)
    ties: tuple[str, ...] = ()  # other fqns naming the same tensor
    uses: int = 1  # how many graph ops read this weight
    source: str | None = None  # user's source line (node.stack_trace, last frame)
    node: str | None = None  # graph node name that reads it
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.shape[self.k_axis]
