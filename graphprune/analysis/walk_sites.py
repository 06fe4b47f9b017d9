"""The module-walk site finder, and the reader of fx ``call_module`` nodes that shares its rules.

Input: a model without a graph (``Capture.method == "walk"``) or one ``call_module`` node of an fx
graph. Only whitelisted module types are known (``WALK_TYPES``: Linear, Conv, ConvTranspose,
transformers' ``Conv1D``; plus MultiheadAttention's ``in_proj_weight``); each gives its weight's K
axis and groups without reading any op. Output: :class:`Site` records (read-only analysis); in the
walk, every other 2-D+ floating parameter is reported as unsupported.
"""

from __future__ import annotations

from torch import fx, nn

from graphprune.analysis.k_axis import module_weight
from graphprune.analysis.site_scan import SiteScan, _flops, _op_name, _source_line, module_of
from graphprune.analysis.sites import Site

WALK_TYPES: tuple[str, ...] = (
    "Linear",
    "LazyLinear",
    "NonDynamicallyQuantizableLinear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Conv1D",  # transformers GPT-2
)


def _fx_module_site(
    node: fx.Node,
    model: nn.Module,
    found: dict[str, Site],
    ties: dict[str, tuple[str, ...]],
    canon: dict[str, str],
) -> None:
    target = str(node.target)
    try:
        mod = model.get_submodule(target)
    except AttributeError:
        return
    if type(mod).__name__ == "MultiheadAttention" and getattr(mod, "in_proj_weight", None) is not None:
        infos = [("in_proj_weight", "linear", 1, 1), ("out_proj.weight", "linear", 1, 1)]
    else:
        info = _module_weight_info(mod)
        infos = [info] if info is not None else []
    for pname, kind, k_axis, groups in infos:
        _fx_add(node, model, found, ties, canon, target, mod, pname, kind, k_axis, groups)


def _fx_add(
    node: fx.Node,
    model: nn.Module,
    found: dict[str, Site],
    ties: dict[str, tuple[str, ...]],
    canon: dict[str, str],
    target: str,
    mod: nn.Module,
    pname: str,
    kind: str,
    k_axis: int,
    groups: int,
) -> None:
    name = canon.get(f"{target}.{pname}", f"{target}.{pname}")
    if name in found:
        found[name].uses += 1
        return
    param = model.get_parameter(name)
    shape = tuple(param.shape)
    mtype = type(mod)
    module_type = f"{mtype.__module__}.{mtype.__qualname__}"
    op = "mha_in_proj" if pname == "in_proj_weight" else _op_name(kind, "", len(shape))
    found[name] = Site(
        param=name,
        module=module_of(name),
        module_type=module_type,
        op=op,
        shape=shape,
        k_axis=k_axis,
        groups=groups,
        flops=0 if module_type.endswith("MultiheadAttention") else _flops(node, kind, shape, k_axis),
        ties=ties.get(name, ()),
        source=_source_line(node),
        node=node.name,
    )


def _module_weight_info(mod: nn.Module) -> tuple[str, str, int, int] | None:
    """(param name, kind, K axis, groups) for the module types of :mod:`graphprune.analysis.k_axis`."""
    row = module_weight(mod)
    return None if row is None else ("weight", row.kind, row.k_axis, row.groups)


def _walk_sites(model: nn.Module, ties: dict[str, tuple[str, ...]]) -> SiteScan:
    sites: list[Site] = []
    seen: set[int] = set()
    covered: set[str] = set()
    for mname, mod in model.named_modules():
        infos: list[tuple[str, str, int, int]] = []
        info = _module_weight_info(mod)
        if info is not None:
            infos.append(info)
        if type(mod).__name__ == "MultiheadAttention" and getattr(mod, "in_proj_weight", None) is not None:
            infos.append(("in_proj_weight", "linear", 1, 1))
        for pname, kind, k_axis, groups in infos:
            p = getattr(mod, pname)
            name = f"{mname}.{pname}" if mname else pname
            if id(p) in seen:
                continue
            seen.add(id(p))
            covered.add(name)
            mtype = type(mod)
            original = getattr(mod, "original_name", None)  # TorchScript keeps the class name here
            module_type = f"{mtype.__module__}.{original or mtype.__qualname__}"
            shape = tuple(p.shape)
            op = _op_name(kind, module_type if original is None else f".{original}", len(shape))
            if type(mod).__name__ == "MultiheadAttention":
                op = "mha_in_proj"
            sites.append(
                Site(
                    param=name,
                    module=mname,
                    module_type=module_type,
                    op=op,
                    shape=shape,
                    k_axis=k_axis,
                    groups=groups,
                    flops=0,
                    ties=ties.get(name, ()),
                )
            )
    unsupported = [
        (n, "module type not in the walk whitelist")
        for n, p in model.named_parameters()
        if p.dim() >= 2 and p.is_floating_point() and n not in covered
    ]
    return SiteScan(sites, unsupported)
