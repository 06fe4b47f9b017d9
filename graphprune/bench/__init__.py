"""``graphprune bench``: dense vs pruned latency, end to end and per layer, on one runtime.

:mod:`.run` drives it (``bench_model``, the CLI verb); :mod:`.timing` times each runtime as
BENCHMARKING.md asks and says which machine it ran on; :mod:`.report` holds the results and the chart.
"""

from graphprune.bench.report import BenchReport, LayerTiming, save_chart
from graphprune.bench.run import add_bench_parser, bench_model, parse_token_counts, run_bench
from graphprune.bench.timing import cpu_model, gpu_info, machine_info

__all__ = [
    "BenchReport",
    "LayerTiming",
    "add_bench_parser",
    "bench_model",
    "cpu_model",
    "gpu_info",
    "machine_info",
    "parse_token_counts",
    "run_bench",
    "save_chart",
]
