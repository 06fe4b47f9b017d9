"""Stage ``cuda-artifact`` (``compile --target cuda``): the pruned model as a loadable 2:4 artifact for NVIDIA GPUs.

The folded 2:4 module is moved to the GPU in the config's ``cuda_dtype``; the pre-flight of
:mod:`graphprune.passes.convert_sparse_forms` times every Linear dense vs 2:4 in ``cuda_mode`` (CUDA-graph
replay by default, the mode the artifact runs in) at the example inputs' token count and at each of
``token_counts``, and keeps 2:4 only where it measured faster (each count its own decision; never slower
than dense in its own timing). The artifact (compressed 2:4 weights, ``semi_plan.json`` with the routes
and measured ratios, ``alg_cache.json``) goes into the output folder's ``cuda/``;
``graphprune.load(folder / "cuda", constructor, device="cuda")`` rebuilds it and runs it from CUDA graphs.

The module is converted in place (it is the last stage): ``CompileResult.model`` is then the CUDA form.
A machine without a CUDA GPU fails before any work with DependencyError (exit 9); a model where no layer
measured faster as 2:4 fails with the per-layer figures (nothing to ship).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from graphprune.errors import DependencyError, OutputError
from graphprune.passes.base import PassContext, PassResult, register_pass

__all__ = ["CUDA_DIR", "CudaArtifactReport", "cuda_artifact_stage", "require_cuda"]

CUDA_DIR = "cuda"


def require_cuda() -> None:
    """DependencyError (exit 9) unless a CUDA GPU that can run 2:4 kernels (sm80+) is present."""
    if not torch.cuda.is_available():
        raise DependencyError("--target cuda needs an NVIDIA GPU (torch.cuda.is_available() is False); compile for onnx here")
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        raise DependencyError(f"--target cuda needs an sm80+ GPU for 2:4 kernels; {torch.cuda.get_device_name()} is sm{major}x")


@dataclass(frozen=True)
class CudaArtifactReport:
    folder: str
    layers: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"folder": self.folder, "layers": self.layers}


@register_pass("cuda-artifact", mutates=("structure",))
def cuda_artifact_stage(module: nn.Module, options: None, ctx: PassContext) -> PassResult:
    """Decide 2:4 per layer and token count on this GPU, in the deployed mode, and write the CUDA artifact."""
    from graphprune.passes.convert_sparse_forms import SparseFormsConfig, build_semi_structured_artifact

    require_cuda()
    if ctx.output is None:
        raise OutputError("stage 'cuda-artifact' needs an output folder")
    cfg = ctx.config
    dtype = getattr(torch, cfg.cuda_dtype)
    module.to(device="cuda", dtype=dtype)
    inputs = tuple(
        x.to("cuda", dtype=dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x.to("cuda") if isinstance(x, torch.Tensor) else x
        for x in ctx.example_inputs
    )
    folder = ctx.output.file(CUDA_DIR)
    opts = SparseFormsConfig(mode=cfg.cuda_mode, token_counts=cfg.token_counts, include=cfg.include, exclude=cfg.exclude)
    rep = build_semi_structured_artifact(module, inputs, folder, opts)
    final = str(ctx.output.final(CUDA_DIR))
    ctx.report.outputs["cuda"] = final
    layers = [lf.to_dict() for lf in rep.layers]
    converted = sum(lf.chosen == "semi_structured" for lf in rep.layers)
    ctx.report.notes.append(f"cuda: {converted} of {len(rep.layers)} Linear layers run 2:4 ({cfg.cuda_mode} mode, {cfg.cuda_dtype}), by measurement")
    return PassResult(module, modified=True, report=CudaArtifactReport(final, layers))
