#!/usr/bin/env bash
# The GPU check, for a lent GPU machine with minutes to spare (no network; torch, triton, pytest,
# scikit-build-core, pybind11, cmake and ninja preinstalled). Correctness first, then speed:
#   1 preflight   nvidia-smi, versions, which Python modules are missing
#   2 build       pip install --no-index -e . for this GPU's architecture only (TFORGE_CUDA=ON)
#   3 tests       one pytest process per op family (sparse24, int8, attention, norms): its
#                 CUDA-device tests (-m gpu) except Triton's, CUDA_LAUNCH_BLOCKING=1
#   4 triton      the Triton-backend tests of all four families on the GPU
#   5 memcheck    compute-sanitizer on benchmarks/gpu_sanitize.py (every CUDA op, odd shapes)
#   6 benchmarks  one goal shape per op, no torch.compile peers
#   7 extras, only in the time left: racecheck, the norms against torch.compile, GPT-2 training
# Every step runs under `timeout -s INT` (pytest still prints its summary line) and never past
# the deadline; the core budgets add up to 340 s, extras only use what earlier steps left, so the
# whole run ends within about 350 s. Everything is packed into $OUT after every step, and a
# one-screen summary is printed and written to $OUT/summary.txt. $OUT holds 3 files (the device
# tool brings back 8 at most): summary.txt, gpu_check.log (progress), gpu_check.tgz (logs/,
# jsonl/ with the benchmarks' JSON lines, steps.tsv, summary.txt).
#   OUT=/tmp/out bash benchmarks/gpu_check.sh          # OUT defaults to benchmarks/results/gpu-<date>
#   bash benchmarks/gpu_check.sh --dry-run             # or GPU_CHECK_DRY_RUN=1: same steps on CPU
# Dry run: no nvidia-smi, no build (the installed tforge), the same pytest selections run on CPU
# (where they skip), the sanitizer driver on CPU without the sanitizer, benchmarks at tiny CPU sizes.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_CHECK_DRY_RUN:-0}; [[ "${1:-}" == "--dry-run" ]] && DRY=1
[[ "$DRY" == 0 ]] || DRY=1
OUT=${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ $DRY == 1 && -x .venv/bin/python ]]; then PY=$PWD/.venv/bin/python   # the dev venv here
else PY=python3; fi
# Logs and JSON lines live outside $OUT and are packed into one archive after every step.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX"); mkdir -p "$WORK/logs" "$WORK/jsonl"
DEADLINE=${GPU_CHECK_DEADLINE:-345}   # seconds from the start; no step runs past it
START=$SECONDS
export PYTHONUNBUFFERED=1 PY WORK DRY
: > "$OUT/gpu_check.log"

stamp() { echo "[gpu_check $(date -u +%T) +$((SECONDS - START))s] $*" | tee -a "$OUT/gpu_check.log"; }
pack() { tar czf "$OUT/gpu_check.tgz.part" -C "$WORK" . && mv -f "$OUT/gpu_check.tgz.part" "$OUT/gpu_check.tgz"; }
nlines() { cat "$WORK"/jsonl/*.jsonl 2>/dev/null | wc -l; }
skip() { echo -e "$1\tskip\t-\t-\t$2" >> "$WORK/steps.tsv"; stamp "$1: skipped ($2)"; }

# run_step NAME BUDGET CMD...: CMD (a command or an exported function) with output in
# logs/NAME.log, SIGINT at min(BUDGET, time to the deadline), SIGKILL 5 s later. Appends
# "name rc seconds budget new_JSON_lines" to steps.tsv (skip: "name skip - - why"), packs,
# and returns CMD's status.
run_step() {
  local name=$1 budget=$2; shift 2
  local left=$((DEADLINE - (SECONDS - START))); ((budget > left)) && budget=$left
  ((budget >= 5)) || { skip "$name" "no time left"; return 1; }
  stamp "$name (budget ${budget}s)"
  local t0=$SECONDS n0; n0=$(nlines)
  timeout -s INT -k 5 "$budget" bash -c '"$@"' _ "$@" > "$WORK/logs/$name.log" 2>&1
  local rc=$?
  echo -e "$name\t$rc\t$((SECONDS - t0))\t$budget\t$(($(nlines) - n0))" >> "$WORK/steps.tsv"
  stamp "$name: exit $rc after $((SECONDS - t0))s"
  pack; return $rc
}

# ---- the steps (exported: run_step runs them in a child bash that timeout can interrupt)
preflight() {
  if [[ $DRY == 0 ]]; then
    nvidia-smi; nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
  fi
  "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for m in ("torch", "triton", "numpy", "pytest", "scikit_build_core", "pybind11", "cmake", "ninja", "safetensors"):
    try:
        print(f"{m:18} {getattr(importlib.import_module(m), '__version__', '?')}")
    except Exception as e:  # a missing module explains a later failure
        print(f"{m:18} MISSING ({type(e).__name__}: {e})")
import torch
print("cuda", torch.version.cuda, "available:", torch.cuda.is_available())
EOF
  (command -v nvcc || ls /usr/local/cuda/bin/nvcc) 2>/dev/null
}
build() {  # TFORGE_CUDA=ON: a missing nvcc fails here instead of building CPU-only kernels
  if [[ $DRY == 1 ]]; then echo "dry run: no build, reusing the installed tforge"
  else TFORGE_CUDA=ON "$PY" -m pip install --no-index --no-build-isolation --no-deps -v -e .; fi
  "$PY" -m tforge.cli info
}
tests() {  # tests "-k expr" FILES...: the CUDA-device tests (-m gpu) of some files
  local k=$1; shift
  CUDA_LAUNCH_BLOCKING=1 "$PY" -m pytest -q -rfE --tb=short -p no:cacheprovider -m gpu -k "$k" "$@"
}
sanitize() {  # sanitize TOOL [ARGS]: the driver under compute-sanitizer (on CPU, bare, when dry)
  local tool=$1; shift
  if [[ $DRY == 1 ]]; then "$PY" benchmarks/gpu_sanitize.py --device cpu; return; fi
  # no caching allocator: each tensor its own allocation, so memcheck sees accesses past its end
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$tool" --error-exitcode 99 --print-limit 30 "$@" \
    "$PY" benchmarks/gpu_sanitize.py
}
bench() { "$PY" "benchmarks/$1" --out "$WORK/jsonl" "${@:2}"; }
export -f preflight build tests sanitize bench

# ---- the run
stamp "OUT=$OUT WORK=$WORK python=$PY$([[ $DRY == 1 ]] && echo ' DRY RUN')"
run_step preflight 10 preflight
if [[ $DRY == 1 ]]; then ARCH=dry-run
else  # 9.0 -> 90a (Hopper needs the arch-specific target for its kernels), 8.0 -> 80
  CC=$(timeout 10 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')
  case "$CC" in 90) ARCH=90a ;; [0-9][0-9] | [0-9][0-9][0-9]) ARCH=$CC ;; *) ARCH=90a ;; esac
  export CMAKE_ARGS="${CMAKE_ARGS:--DCMAKE_CUDA_ARCHITECTURES=$ARCH}" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
fi
stamp "architecture: $ARCH"
FAMILIES=(sparse24 int8 attention norms)
declare -A FILES=([sparse24]=tests/test_sparse24.py [int8]=tests/test_int8_gemm.py
  [attention]=tests/test_attention.py
  [norms]="tests/test_layer_norm.py tests/test_rms_norm.py tests/test_norm_api.py")
declare -A BUDGET=([sparse24]=18 [int8]=18 [attention]=25 [norms]=25)
if run_step build 90 build; then
  for f in "${FAMILIES[@]}"; do run_step "tests-$f" "${BUDGET[$f]}" tests "not triton" ${FILES[$f]}; done
  run_step tests-triton 32 tests triton ${FILES[sparse24]} ${FILES[int8]} ${FILES[attention]} ${FILES[norms]}
  SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer); export SANITIZER
  HAVE_SAN=$([[ $DRY == 1 || -x $SANITIZER ]] && echo 1 || echo 0)
  if [[ $HAVE_SAN == 1 ]]; then run_step memcheck 35 sanitize memcheck
  else skip memcheck "no compute-sanitizer"; fi
  # Benchmarks: GPU goal shapes, or tiny CPU sizes in a dry run. No torch.compile peers here.
  if [[ $DRY == 1 ]]; then
    Q=(--device cpu --quick --repeats 3 --max-seconds 0.5)
    SP=64x256x512; I8=$SP; ATT=1x128x2x64; NORM=512x768; DT=fp32
  else
    Q=(--repeats 10 --max-seconds 2)
    SP=4096x4096x4096; I8=8192x8192x8192; ATT=4x4096x16x128; NORM=16384x4096; DT=bf16
  fi
  run_step bench-sparse24 12 bench bench_sparse24.py "${Q[@]}" --shapes "$SP"
  run_step bench-int8 15 bench bench_int8_gemm.py "${Q[@]}" --shapes "$I8"
  run_step bench-attention 20 bench bench_attention.py "${Q[@]}" --shapes "$ATT" --dtypes "$DT" --causal 0 \
    --directions fwd,bwd --no-eager
  NORMQ=("${Q[@]}" --shapes "$NORM" --dtypes "$DT" --directions fwd,bwd)
  run_step bench-layer-norm 20 bench bench_layer_norm.py "${NORMQ[@]}" --no-compile
  run_step bench-rms-norm 20 bench bench_rms_norm.py "${NORMQ[@]}" --no-compile
  # Extras, in whatever time the steps above left (each is cut at the deadline).
  if [[ $HAVE_SAN == 0 || $DRY == 1 ]]; then skip racecheck "no compute-sanitizer, or a dry run"
  else run_step racecheck 40 sanitize racecheck --kernel-name kns=tforge; fi  # tforge's kernels only
  run_step bench-norms-compile 45 bench bench_layer_norm.py "${NORMQ[@]}" --ops layer_norm --no-check
  TRAIN=(--quick); [[ $DRY == 1 ]] || TRAIN=(--data random --train-steps 20 --eval-every 10 --eval-batches 2)
  run_step bench-train 40 bench bench_train.py "${TRAIN[@]}"
else
  skip later-steps "the build failed: tests, sanitizer and benchmarks not run (logs/build.log)"
fi

# ---- the summary: one line per step, the benchmarks' goal verdicts, where the files are
detail() {  # the line worth reading from a step's log
  local log="$WORK/logs/$1.log"
  case $1 in
    tests-*) grep -E '[0-9]+ (passed|failed|skipped|deselected|errors?)|no tests ran' "$log" | tail -n1 | tr -d '=' ;;
    memcheck | racecheck)  # counts too, for a run cut short before the sanitizer's summary
      { grep -E 'SUMMARY' "$log" | tail -n1 | sed 's/^=* *//'
        echo "$(grep -c '^ok ' "$log") cases ok, $(grep -c -E '^========= +(Invalid|Program hit|Error|.*[Hh]azard|.*Race)' \
          "$log") sanitizer reports"; } | paste -sd';' ;;
    preflight) { grep MISSING "$log" | awk '{print $1}' | paste -sd, | sed 's/^./missing: &/'
      grep -E '^cuda .*available' "$log"; } | grep . | paste -sd';' | cut -c1-70 ;;
    build) { grep -E '^CUDA kernels' "$log" || grep -m1 -E 'FAILED:|error:|Error' "$log"; } | cut -c1-75 ;;
    *) grep . "$log" | tail -n1 | cut -c1-60 ;;
  esac
}
summary() {
  local total=$((SECONDS - START)) gpu="CPU (dry run)"
  [[ $DRY == 1 ]] || gpu=$(timeout 10 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
  echo "tforge gpu_check $(date -u +%FT%TZ)  $(git rev-parse --short HEAD 2>/dev/null)  on ${gpu:-?} (arch $ARCH)"
  echo "total ${total}s (deadline ${DEADLINE}s)$([[ $DRY == 1 ]] && echo '  DRY RUN: nothing ran on a GPU')"
  printf '%-20s %-8s %9s  %s\n' step status "s/budget" detail
  while IFS=$'\t' read -r name rc secs budget nrec; do
    local st d
    case $rc in 0) st=ok ;; 124 | 137) st=TIMEOUT ;; skip) st=skipped ;; *) st="FAIL($rc)" ;; esac
    [[ $name == tests-* && $rc == 5 ]] && st="no tests"
    [[ $name == tests-* && $rc == 0 ]] && st=PASS
    if [[ $rc == skip ]]; then d=$nrec
    elif [[ $name == bench-* ]]; then d="$nrec JSON lines"; [[ $rc == 0 ]] || d="$d; $(detail "$name")"
    else d=$(detail "$name"); fi
    printf '%-20s %-8s %9s  %s\n' "$name" "$st" "$secs/$budget" "$d"
  done < "$WORK/steps.tsv"
  echo "goals (a norm goal without its torch.compile peer reads [no peer]):"
  grep -h -E '^\[(MET|NOT MET)\]' "$WORK"/logs/bench-*.log 2>/dev/null | cut -c1-110 \
    | sed -e '/compile not run/s/^\[NOT MET\]/[no peer]/' -e 's/^/  /'
  echo "files: $OUT/{summary.txt,gpu_check.log,gpu_check.tgz} (tgz: logs/<step>.log, jsonl/, steps.tsv)"
}
summary | tee "$WORK/summary.txt" "$OUT/summary.txt" >> "$OUT/gpu_check.log"
cat "$OUT/summary.txt"
pack
# exit 1 when any step failed or timed out (pytest's 5, "no tests selected", is not a failure)
awk -F'\t' '$2 != "0" && $2 != "skip" && $2 != "5" { bad = 1 } END { exit bad }' "$WORK/steps.tsv"
