"""Step 2 of the ``graphprune`` backend: give each ``linear`` with a constant weight the runtime form
:func:`graphprune.passes.convert_sparse_forms.choose_form` picks by measurement at the node's real input
shape (CSR on CPU above the sparsity threshold; 2:4 on CUDA, fp16/bf16, as
:class:`graphprune.runtime.semi_cuda.SemiSparseLinear`: the same runtime, algorithm cache and per-shape
decision as ``graphprune.compile``'s CUDA artifact). A converted node becomes a call to
``graphprune::sparse_linear`` (:mod:`graphprune.backend.op`). Numerics are unchanged (checked per layer
by ``choose_form``). Layers of one shape share one timing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from graphprune.backend.graph import bias_arg, readable, static_value, weight_arg
from graphprune.backend.op import sparse_linear
from graphprune.backend.options import BackendOptions, BackendReport

__all__ = ["LINEAR_TARGETS", "accelerate_graph"]

LINEAR_TARGETS: set[object] = {torch._C._nn.linear, F.linear}


def accelerate_graph(
    gm: fx.GraphModule, values: dict[fx.Node, Tensor], opts: BackendOptions, report: BackendReport, kernels: list[nn.Module], mode: str = "eager"
) -> None:
    """Convert the linear nodes of ``gm`` whose measured sparse form is faster; ``kernels`` collects the
    modules the graph now calls (the compiled callable must keep them alive)."""
    from graphprune.passes.convert_sparse_forms import PreflightMemo, choose_form

    forms_cfg = opts.forms_config(mode)
    memo = PreflightMemo(forms_cfg)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in LINEAR_TARGETS:
            continue
        w_node, b_node = weight_arg(node), bias_arg(node)
        w = static_value(w_node, values)
        if w is None:
            continue
        name = readable(w_node) if isinstance(w_node, fx.Node) else node.name
        b = None
        if b_node is not None:
            b = static_value(b_node, values)
            if b is None:
                report.forms.append({"name": name, "chosen": "dense", "reason": "bias is computed in the graph, not a constant"})
                continue
        x_node = node.args[0] if node.args else node.kwargs.get("input")
        fake = x_node.meta.get("example_value") if isinstance(x_node, fx.Node) else None
        if not isinstance(fake, Tensor) or any(not isinstance(s, int) for s in fake.shape):
            report.forms.append({"name": name, "chosen": "dense", "reason": "input shape unknown or dynamic at compile time"})
            continue
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        lin.weight = nn.Parameter(w.detach(), requires_grad=False)
        if b is not None:
            lin.bias = nn.Parameter(b.detach(), requires_grad=False)
        gen = torch.Generator(device=w.device).manual_seed(0)
        x = torch.randn(tuple(fake.shape), generator=gen, device=w.device, dtype=torch.float32).to(fake.dtype)
        rec, mod = choose_form(name, lin, x, forms_cfg, memo=memo)
        report.forms.append(rec.to_dict())
        if mod is None:
            continue
        kernels.append(mod)  # kept alive by the compiled callable, not registered on gm (nothing to lift)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_function(sparse_linear.op, (x_node, sparse_linear.add(mod)))
        new.meta.update(node.meta)
        new.meta["graphprune"] = {"pass": "backend-sparse-forms", "form": rec.chosen}
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    memo.save()
    report.notes.extend(memo.notes)
