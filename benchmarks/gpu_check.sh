#!/usr/bin/env bash
# The GPU check: on a GPU machine with no network (torch, triton, pybind11,
# scikit-build-core, cmake and ninja preinstalled), build tforge from source,
# run the GPU tests and the kernel benchmarks, and leave logs and JSON lines in
# $OUT (else benchmarks/results/): gpu_check.log, build.log, info.json,
# gpu_tests.log, bench.log and results_jsonl.tgz. Budget: well inside 8 minutes.
#   OUT=/tmp/out bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# Only the GPU's own architecture, to keep the build short there.
export CMAKE_ARGS="${CMAKE_ARGS:--DCMAKE_CUDA_ARCHITECTURES=90a}"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
status=0
stamp() { echo "[gpu_check $(date +%T)] $*"; }

stamp "build" | tee "$OUT/gpu_check.log"
{ nvidia-smi; time $PY -m pip install --no-build-isolation --no-deps -e . ; } > "$OUT/build.log" 2>&1 \
  || { stamp "BUILD FAILED (see build.log)" | tee -a "$OUT/gpu_check.log"; exit 1; }
$PY -m tforge.cli info --json > "$OUT/info.json" 2>&1 || status=1

stamp "GPU tests" | tee -a "$OUT/gpu_check.log"
timeout 150 $PY -m pytest -q -m gpu -p no:cacheprovider tests/ > "$OUT/gpu_tests.log" 2>&1 || status=1
tail -n 3 "$OUT/gpu_tests.log" | tee -a "$OUT/gpu_check.log"

stamp "benchmarks" | tee -a "$OUT/gpu_check.log"
# JSON lines go to one folder, packed into a single file at the end: the device
# tool brings back at most 8 files.
mkdir -p "$OUT/jsonl"
bench() { local t=$1; shift; timeout "$t" $PY "$@" --out "$OUT/jsonl" >> "$OUT/bench.log" 2>&1 || { status=1; echo "FAILED or timed out: $*" >> "$OUT/bench.log"; }; }
# Norms at the goal shape only: each torch.compile peer compiles once per case.
bench 90 benchmarks/bench_layer_norm.py --dtypes bf16 --repeats 10 --shapes 16384x4096 --directions fwd,bwd
bench 45 benchmarks/bench_rms_norm.py --dtypes bf16 --repeats 10 --shapes 16384x4096 --directions fwd,bwd
bench 80 benchmarks/bench_attention.py --repeats 10 --max-seconds 4
bench 50 benchmarks/bench_int8_gemm.py --repeats 10 --max-seconds 4
bench 50 benchmarks/bench_sparse24.py --repeats 10 --max-seconds 4
bench 90 benchmarks/bench_train.py --device cuda
tar czf "$OUT/results_jsonl.tgz" -C "$OUT/jsonl" . && rm -rf "$OUT/jsonl"
stamp "done, status $status" | tee -a "$OUT/gpu_check.log"
exit $status
