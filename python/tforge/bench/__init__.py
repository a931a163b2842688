"""Benchmark machinery shared by benchmarks/bench_<op>.py: interleaved timing
(harness), machine info and measured ceilings (machine), tables and JSON lines
(report). Op-specific code (inputs, byte counts, peers) stays in the scripts."""
from tforge.bench.harness import L2Flusher, Stats, bench_interleaved, do_bench, quantile
from tforge.bench.machine import copy_bandwidth, gemm_tflops, machine_info, versions
from tforge.bench.report import append_jsonl, format_table, gbps, make_record, resolve_out_dir

__all__ = ["Stats", "bench_interleaved", "do_bench", "L2Flusher", "quantile", "machine_info", "versions",
           "copy_bandwidth", "gemm_tflops", "append_jsonl", "format_table", "gbps", "make_record",
           "resolve_out_dir"]
