"""``torch.compile(model, backend="graphprune")``: the sparse pipeline as a Dynamo backend.

:mod:`.adapter` is the backend (prune -> accelerate -> inductor, reports on the backend object);
:mod:`.options` its options and report; :mod:`.prune` prunes through the pipeline's own stages;
:mod:`.accelerate` gives layers their measured runtime form; :mod:`.op` is the custom op those layers
are called through; :mod:`.graph` reads Dynamo's graph.
"""

from graphprune.backend.adapter import CompiledGraph, GraphpruneBackend, graphprune_backend, last_report, register
from graphprune.backend.options import BackendOptions, BackendReport

__all__ = ["BackendOptions", "BackendReport", "CompiledGraph", "GraphpruneBackend", "graphprune_backend", "last_report", "register"]
