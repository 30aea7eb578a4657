"""``run_bench``: every method on one preset, same data, steps, optimiser and seeds, side by side."""

from inhernet_bench.report import bench_table, write_json, write_plots
from inhernet_bench.runner import BenchConfig, run_bench, teacher_digest

__all__ = ["BenchConfig", "bench_table", "run_bench", "teacher_digest", "write_json", "write_plots"]
