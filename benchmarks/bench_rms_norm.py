#!/usr/bin/env python
"""Benchmark tforge's RMSNorm (plain and fused with a residual add) against
F.rms_norm eager and torch.compile: bench_layer_norm.py's code run with the
RMSNorm ops (same flags, table, goals and JSON lines, to
benchmarks/results/rms_norm.jsonl and add_rms_norm.jsonl).

    python benchmarks/bench_rms_norm.py --quick --no-compile
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_layer_norm import RMS_NORM_OPS, main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(ops=RMS_NORM_OPS, prog="bench_rms_norm.py"))
