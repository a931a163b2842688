#!/usr/bin/env python
"""Benchmark tforge's LayerNorm (plain and fused with a residual add) against
PyTorch eager and torch.compile, interleaved in the same run.

For each op, shape (rows x hidden), dtype and direction (fwd, bwd, fwdbwd),
every usable tforge backend is timed round-robin with the two peers:
  eager    F.layer_norm (fused op: ``s = x + r; F.layer_norm(s)``)
  compile  the same function under torch.compile (inductor, static shapes)
Prints a table (ms, GB/s of minimal traffic, % of the copy bandwidth measured
in this run, speed-up vs eager and vs compile), says whether the project's
goals are met, and appends JSON lines to benchmarks/results/<op>.jsonl (or
$OUT/<op>.jsonl, or --out DIR).

bench_rms_norm.py runs this same code with the RMSNorm ops (see OPS tables).

    python benchmarks/bench_layer_norm.py                     # default shapes
    python benchmarks/bench_layer_norm.py --quick --no-compile
    python benchmarks/bench_layer_norm.py --ops add_layer_norm --shapes 8192x1024 --directions fwd
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

import tforge
from tforge import _backend, testing
from tforge.bench import harness, machine, report
from tforge.ops.layer_norm import add_layer_norm_ref, layer_norm_ref
from tforge.ops.rms_norm import add_rms_norm_ref, rms_norm_ref

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SHAPES = ((4096, 768), (8192, 1024), (16384, 4096))
QUICK_SHAPE = (1024, 768)
DIRECTIONS = ("fwd", "bwd", "fwdbwd")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
PEERS = ("eager", "compile")

# GPU goals, judged at this shape and dtype (fractions of the measured copy bandwidth).
GPU_GOAL_SHAPE, GPU_GOAL_DTYPE = (16384, 4096), torch.bfloat16
GPU_GOAL_FRAC = {"fwd": 0.85, "bwd": 0.70}


# ---------------------------------------------------------------- the ops

@dataclass(frozen=True)
class NormOp:
    """One normalisation op and its peers. Every callable takes (x, r, w, b)
    (r None unless fused, b None unless has_bias) and returns a tuple of
    outputs: (y,) or, fused, (y, x + r)."""
    name: str
    family: str                 # "LayerNorm" / "RMSNorm", for messages
    fused: bool
    has_bias: bool
    ours: Callable              # (x, r, w, b, backend) -> outputs
    eager: Callable             # (x, r, w, b) -> outputs; also what torch.compile compiles
    ref: Callable               # (x, r, w, b) -> outputs, tforge's fp32 reference
    cpu_fwd_goal: Optional[float] = None  # wanted speed-up over eager, CPU fp32 forward
    goal_note: str = ""


def _ln(x, r, w, b, backend):
    return (tforge.layer_norm(x, w, b, 1e-5, backend=backend),)


def _add_ln(x, r, w, b, backend):
    return tforge.add_layer_norm(x, r, w, b, 1e-5, backend=backend)


def _rms(x, r, w, b, backend):
    return (tforge.rms_norm(x, w, 1e-6, backend=backend),)


def _add_rms(x, r, w, b, backend):
    return tforge.add_rms_norm(x, r, w, 1e-6, backend=backend)


def eager_layer_norm(x, r, w, b):
    return (F.layer_norm(x, (x.shape[-1],), w, b, 1e-5),)


def eager_add_layer_norm(x, r, w, b):
    s = x + r
    return F.layer_norm(s, (s.shape[-1],), w, b, 1e-5), s


def eager_rms_norm(x, r, w, b):
    return (F.rms_norm(x, (x.shape[-1],), w, 1e-6),)


def eager_add_rms_norm(x, r, w, b):
    s = x + r
    return F.rms_norm(s, (s.shape[-1],), w, 1e-6), s


LAYER_NORM_OPS = {
    "layer_norm": NormOp("layer_norm", "LayerNorm", False, True, _ln, eager_layer_norm,
                         lambda x, r, w, b: (layer_norm_ref(x, w, b, 1e-5),), cpu_fwd_goal=1.0),
    "add_layer_norm": NormOp("add_layer_norm", "LayerNorm", True, True, _add_ln, eager_add_layer_norm,
                             lambda x, r, w, b: add_layer_norm_ref(x, r, w, b, 1e-5), cpu_fwd_goal=1.5),
}
RMS_NORM_OPS = {
    "rms_norm": NormOp("rms_norm", "RMSNorm", False, False, _rms, eager_rms_norm,
                       lambda x, r, w, b: (rms_norm_ref(x, w, 1e-6),), cpu_fwd_goal=1.0,
                       goal_note=" (LayerNorm's target)"),
    "add_rms_norm": NormOp("add_rms_norm", "RMSNorm", True, False, _add_rms, eager_add_rms_norm,
                           lambda x, r, w, b: add_rms_norm_ref(x, r, w, 1e-6), cpu_fwd_goal=1.5,
                           goal_note=" (add+LayerNorm's target)"),
}


def norm_bytes(direction: str, rows: int, hidden: int, elem_size: int, *, fused: bool, n_params: int) -> int:
    """Minimal memory traffic of one call, in bytes (per-row mean/rstd ignored).
    fwd: reads x (+ residual) and the params, writes y (+ residual_out).
    bwd: reads dy, x (+ d residual_out) and the weight, writes dx and a grad
         per param (dx serves x and residual alike: one write).
    fwdbwd: the sum."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    act = rows * hidden * elem_size
    par = hidden * elem_size
    streams = 2 if fused else 1
    fwd = streams * act + n_params * par + streams * act
    bwd = (2 + (1 if fused else 0)) * act + (par if n_params else 0) + act + n_params * par
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[direction]


# ---------------------------------------------------------------- cases

@dataclass
class Inputs:
    x: torch.Tensor
    r: Optional[torch.Tensor]
    w: torch.Tensor
    b: Optional[torch.Tensor]
    grads: tuple  # dy (, d residual_out)

    def args(self):
        return self.x, self.r, self.w, self.b

    def leaves(self):
        return [t for t in (self.x, self.r, self.w, self.b) if t is not None]


def make_inputs(op: NormOp, rows: int, hidden: int, dtype: torch.dtype, device: torch.device,
                requires_grad: bool, seed: int = 0) -> Inputs:
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        t = (torch.randn(*shape, generator=g) * scale + shift).to(device=device, dtype=dtype)
        return t.requires_grad_(requires_grad)

    x = rnd(rows, hidden)
    r = rnd(rows, hidden) if op.fused else None
    w = rnd(hidden, scale=0.1, shift=1.0)
    b = rnd(hidden, scale=0.1) if op.has_bias else None
    n_out = 2 if op.fused else 1
    grads = tuple(torch.randn(rows, hidden, generator=g).to(device=device, dtype=dtype) for _ in range(n_out))
    return Inputs(x, r, w, b, grads)


def direction_fn(direction: str, fn: Callable, fwd_in: Inputs, grad_in: Inputs) -> Callable[[], object]:
    """The zero-argument callable that times `fn` in `direction`.
    fwd: inputs that need no grad. bwd: one forward graph kept alive
    (retain_graph) and only torch.autograd.grad timed. fwdbwd: both."""
    if direction == "fwd":
        args = fwd_in.args()
        return lambda: fn(*args)
    args, leaves, grads = grad_in.args(), grad_in.leaves(), grad_in.grads
    if direction == "bwd":
        outs = fn(*args)
        return lambda: torch.autograd.grad(outs, leaves, grads, retain_graph=True)
    return lambda: torch.autograd.grad(fn(*args), leaves, grads)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check_backend(op: NormOp, backend: str, fwd_in: Inputs, grad_in: Inputs) -> str:
    """'ok', or what is wrong: the forward within testing's tolerances of the
    fp32 reference, and the gradients within a relative-norm bound of eager's."""
    try:
        outs = op.ours(*fwd_in.args(), backend)
        refs = op.ref(*fwd_in.args())
        for i, (o, e) in enumerate(zip(outs, refs)):
            testing.assert_close(o, e, name=f"{op.name}[{backend}] output {i}")
        g_ours = torch.autograd.grad(op.ours(*grad_in.args(), backend), grad_in.leaves(), grad_in.grads)
        g_eager = torch.autograd.grad(op.eager(*grad_in.args()), grad_in.leaves(), grad_in.grads)
        tol = 1e-4 if grad_in.x.dtype in (torch.float32, torch.float64) else 3e-2
        for i, (a, e) in enumerate(zip(g_ours, g_eager)):
            err = _rel_err(a, e)
            if not err <= tol:
                return f"gradient {i} relative error {err:.2g} vs eager exceeds {tol}"
    except Exception as exc:  # report and go on: a benchmark should not die on one backend
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return "ok"


# ---------------------------------------------------------------- running

def default_backends(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Every tforge backend chosen automatically on this device type that can serve (device, dtype), except
    the pure-torch reference (so never Triton under its slow CPU interpreter)."""
    return [name for name in testing.backend_names(device.type)
            if name != "torch" and _backend.why_unavailable(name, device, dtype) is None]


def select_backends(requested: Optional[Sequence[str]], device: torch.device, dtype: torch.dtype,
                    notes: list[str]) -> list[str]:
    if not requested:
        return default_backends(device, dtype)
    if list(requested) == ["all"]:
        requested = testing.backend_names()
    out = []
    for name in requested:
        reason = _backend.why_unavailable(name, device, dtype)
        if reason is None:
            out.append(name)
        else:
            notes.append(f"skipped backend {name} for {report.dtype_str(dtype)}: {reason}")
    return out


def parse_shape(text: str) -> tuple[int, int]:
    try:
        rows, hidden = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like ROWSxHIDDEN (e.g. 4096x768), got {text!r}") from None
    if rows < 1 or hidden < 1:
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return rows, hidden


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser(ops: dict, prog: Optional[str] = None) -> argparse.ArgumentParser:
    names = list(ops)
    p = argparse.ArgumentParser(prog=prog, description=f"Benchmark tforge {', '.join(names)} against PyTorch eager "
                                "and torch.compile (interleaved), print a table and append JSON lines.")
    p.add_argument("--ops", type=_csv, default=names, help=f"comma-separated, from {','.join(names)} (default: all)")
    p.add_argument("--shapes", type=lambda s: [parse_shape(v) for v in _csv(s)], default=None,
                   help="comma-separated ROWSxHIDDEN (default: " + ",".join(f"{r}x{h}" for r, h in DEFAULT_SHAPES)
                   + f"; --quick: {QUICK_SHAPE[0]}x{QUICK_SHAPE[1]})")
    p.add_argument("--dtypes", type=_csv, default=None,
                   help="comma-separated fp32,bf16,fp16 (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--directions", type=_csv, default=list(DIRECTIONS), help="comma-separated fwd,bwd,fwdbwd")
    p.add_argument("--backends", type=_csv, default=None,
                   help="comma-separated tforge backends, or 'all' (default: every usable one except the "
                        "'torch' reference; Triton only on CUDA)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per case at most (default 30; quick 10)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="time budget per case, warm-up included (default 8; quick 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads before running (CPU; tforge's kernels follow it)")
    p.add_argument("--malloc-reuse", action="store_true",
                   help="CPU/glibc: reuse freed memory instead of fresh mmaps (no first-touch page faults), "
                        "to compare kernels rather than allocations; recorded in the JSON")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    p.add_argument("--no-check", action="store_true", help="skip the correctness check before timing")
    p.add_argument("--quick", action="store_true", help="one small shape, few repeats (demo and tests)")
    p.add_argument("--out", default=None, help="folder for <op>.jsonl (default: $OUT if set, else benchmarks/results)")
    p.add_argument("--no-json", action="store_true", help="print only; write no JSON lines")
    return p


def _compile_peer(fn: Callable, notes: list[str], label: str) -> Optional[Callable]:
    """torch.compile(fn) with static shapes, on a fresh dynamo cache so each
    shape gets its own specialised kernel (and no recompile limit is hit)."""
    import torch._dynamo
    torch._dynamo.reset()
    try:
        return torch.compile(fn, dynamic=False)
    except Exception as exc:  # pragma: no cover - depends on the toolchain
        notes.append(f"torch.compile unavailable for {label}: {type(exc).__name__}: {exc}")
        return None


def _try_first_call(fn: Callable, label: str, notes: list[str]) -> bool:
    try:
        fn()
        return True
    except Exception as exc:
        notes.append(f"{label} failed, left out: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return False


def run(args: argparse.Namespace, ops: dict) -> tuple[list[dict], list[str]]:
    """Run every case; returns (records, notes). Prints progress as it goes."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU")
    unknown = [o for o in args.ops if o not in ops]
    if unknown:
        raise SystemExit(f"unknown op(s) {', '.join(unknown)}; this benchmark has {', '.join(ops)}")
    bad_dirs = [d for d in args.directions if d not in DIRECTIONS]
    if bad_dirs:
        raise SystemExit(f"unknown direction(s) {', '.join(bad_dirs)}; expected {', '.join(DIRECTIONS)}")
    dtype_names = args.dtypes or (["bf16"] if device.type == "cuda" else ["fp32"])
    bad_dtypes = [d for d in dtype_names if d not in DTYPES]
    if bad_dtypes:
        raise SystemExit(f"unknown dtype(s) {', '.join(bad_dtypes)}; expected fp32, bf16 or fp16")
    dtypes = [DTYPES[d] for d in dtype_names]
    shapes = args.shapes or ([QUICK_SHAPE] if args.quick else list(DEFAULT_SHAPES))
    repeats = args.repeats or (10 if args.quick else 30)
    max_seconds = args.max_seconds or (1.0 if args.quick else 8.0)
    use_compile = not args.no_compile
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("--threads must be >= 1")
        torch.set_num_threads(args.threads)

    notes: list[str] = []
    malloc_reuse = False
    if args.malloc_reuse:
        malloc_reuse = harness.malloc_reuse()
        if not malloc_reuse:
            notes.append("--malloc-reuse had no effect (not glibc)")
    info = machine.machine_info(device)
    vers = machine.versions()
    run_id = f"{report.timestamp()}-{uuid.uuid4().hex[:8]}"
    print(f"# {info['cpu']} ({info['cores']} cores, {info['threads']} torch threads, tforge CPU ISA "
          f"{info['cpu_isa']})" + (f"; GPU {info['gpu']}" if info["gpu"] else ""))
    print(f"# torch {vers['torch']}, triton {vers['triton']}, tforge {vers['tforge']}; device {device}"
          + ("; malloc reuse on (no first-touch page faults)" if malloc_reuse else ""))
    copy = machine.copy_bandwidth(device, 64 * 2**20 if args.quick else None,
                                  max_seconds=0.5 if args.quick else 2.0)
    ref_copy = machine.reference_ceiling(info["gpu"], "copy_gbps")
    print(f"# measured copy bandwidth: {copy['copy_gbps']:.1f} GB/s (read+write, {copy['copy_bytes'] / 2**20:.0f} MiB"
          " moved per copy)" + (f"; reference for this GPU: {ref_copy:.0f} GB/s" if ref_copy else ""))
    if hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], info["usable_cores"] or info["cores"] or 1
        print(f"# load average before the run: {load:.2f}")
        if load > 0.75 * cores:
            notes.append(f"the machine was busy (load average {load:.1f} on {cores} cores at the start): absolute "
                         "times are inflated and noisy; the interleaved ratios are the numbers to read")
    print()

    if device.type == "cpu" and sys.platform.startswith("linux") and not malloc_reuse:
        big = [f"{r}x{h} {report.dtype_str(d)}" for r, h in shapes for d in dtypes
               if r * h * torch.empty((), dtype=d).element_size() >= 32 * 2**20]
        if big:
            notes.append(f"at {', '.join(big)} every output is a fresh mmap (>= 32 MiB): first-touch page faults "
                         "take most of each call, for tforge and its peers alike, so ratios there tend to 1 "
                         "(see benchmarks/results/README.md)")

    # Each case's JSON lines are appended as soon as it is measured, so a run cut short
    # (gpu_check.sh's timeouts) keeps everything measured before the cut.
    out_dir = None if args.no_json else report.resolve_out_dir(args.out, RESULTS_DIR)
    records: list[dict] = []
    for op_name in args.ops:
        op = ops[op_name]
        n_params = 2 if op.has_bias else 1
        for dtype in dtypes:
            backends = select_backends(args.backends, device, dtype, notes)
            for rows, hidden in shapes:
                label = f"{op.name} {rows}x{hidden} {report.dtype_str(dtype)}"
                fwd_in = make_inputs(op, rows, hidden, dtype, device, requires_grad=False)
                grad_in = make_inputs(op, rows, hidden, dtype, device, requires_grad=True)
                checks = {}
                if not args.no_check:
                    for be in backends:
                        checks[be] = check_backend(op, be, fwd_in, grad_in)
                        if checks[be] != "ok":
                            notes.append(f"CHECK FAILED {label} backend {be}: {checks[be]}")
                compiled = _compile_peer(op.eager, notes, label) if use_compile else None
                for direction in args.directions:
                    cands: dict[str, Callable] = {}
                    for be in backends:
                        f = direction_fn(direction, lambda x, r, w, b, _be=be: op.ours(x, r, w, b, _be),
                                         fwd_in, grad_in)
                        if _try_first_call(f, f"{label} {direction} backend {be}", notes):
                            cands[be] = f
                    eager = direction_fn(direction, op.eager, fwd_in, grad_in)
                    cands["eager"] = eager
                    if compiled is not None:
                        try:
                            t0 = time.perf_counter()
                            f = direction_fn(direction, compiled, fwd_in, grad_in)
                            f()  # compiles (first time for this graph)
                            dt = time.perf_counter() - t0
                            if dt > 2:
                                print(f"  (torch.compile of {label} {direction}: {dt:.0f} s)", flush=True)
                            cands["compile"] = f
                        except Exception as exc:
                            notes.append(f"torch.compile failed for {label} {direction}: {type(exc).__name__}: "
                                         f"{str(exc).splitlines()[0] if str(exc) else ''}")
                            compiled = None
                    nbytes = norm_bytes(direction, rows, hidden, torch.empty((), dtype=dtype).element_size(),
                                        fused=op.fused, n_params=n_params)
                    stats = harness.bench_interleaved(cands, device=device, warmup=2, repeats=repeats,
                                                      min_repeats=3 if args.quick else 5, max_seconds=max_seconds,
                                                      working_set_bytes=nbytes)
                    eager_s, comp_s = stats["eager"], stats.get("compile")
                    case_records = []
                    for name, st in stats.items():
                        rec = report.make_record(
                            op=op.name, shape=(rows, hidden), dtype=dtype, direction=direction, backend=name,
                            median_ms=st.median_ms, machine=info, versions=vers, nbytes=nbytes,
                            copy_gbps=copy["copy_gbps"], ratio=st.ratio_to(eager_s),
                            ratio_vs_compile=st.ratio_to(comp_s) if comp_s is not None else None, run_id=run_id,
                            ratio_paired=st.paired_ratio_to(eager_s),
                            ratio_vs_compile_paired=st.paired_ratio_to(comp_s) if comp_s is not None else None,
                            min_ms=st.min_ms, p20_ms=st.quantile_ms(0.2), p80_ms=st.quantile_ms(0.8),
                            repeats=st.n, inner=st.inner, faults_per_call=st.faults_per_call,
                            kind="peer" if name in PEERS else "tforge", check=checks.get(name),
                            quick=bool(args.quick), malloc_reuse=malloc_reuse, threads=torch.get_num_threads(),
                            device=device.type, loadavg=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
                        case_records.append(rec)
                    records += case_records
                    if out_dir is not None:
                        report.append_jsonl(report.jsonl_path(out_dir, op.name), case_records)
                    line = "  ".join(f"{n} {s.median_ms:.3f} ms" + ("" if n == "eager" else
                                                                    f" ({s.ratio_to(eager_s):.2f}x)")
                                     for n, s in stats.items())
                    print(f"{label} {direction:6s}: {line}", flush=True)
                del fwd_in, grad_in
    return records, notes


def evaluate_goals(records: Sequence[dict], ops: dict) -> list[dict]:
    """The project's goals, judged on this run's records (None: not measured)."""
    goals = []
    by = {(r["op"], tuple(r["shape"]), r["dtype"], r["direction"], r["device"], r["backend"]): r for r in records}
    for op in ops.values():
        # CPU, fp32, forward, our C++ kernel vs eager: at the goal shapes (the defaults) that ran.
        if op.cpu_fwd_goal is not None:
            rs = [r for k, r in by.items() if k[0] == op.name and k[2] == "float32" and k[3] == "fwd"
                  and k[4] == "cpu" and k[5] == "cpu" and k[1] in DEFAULT_SHAPES]
            what = f"CPU fp32 {op.name} forward >= {op.cpu_fwd_goal:.1f}x eager{op.goal_note}"
            if not rs:
                goals.append({"what": what, "met": None, "detail": "not measured in this run"})
            else:
                detail = ", ".join(f"{report.shape_str(r['shape'])}: {r['ratio']:.2f}x" for r in rs)
                goals.append({"what": what, "met": all(r["ratio"] >= op.cpu_fwd_goal for r in rs), "detail": detail})
        # GPU at (16384, 4096) bf16: fraction of copy bandwidth and faster than compile.
        for be in [b for b in testing.backend_names("cuda") if b != "torch"]:
            for direction, frac in GPU_GOAL_FRAC.items():
                r = by.get((op.name, GPU_GOAL_SHAPE, "bfloat16", direction, "cuda", be))
                what = (f"H200 {op.name} {direction} [{be}] at {report.shape_str(GPU_GOAL_SHAPE)} bf16: >= "
                        f"{100 * frac:.0f}% of copy bandwidth and faster than torch.compile")
                if r is None:
                    if any(k[4] == "cuda" for k in by):
                        goals.append({"what": what, "met": None, "detail": "not measured in this run"})
                    continue
                vs_c = r.get("ratio_vs_compile")
                met = r["frac_copy"] is not None and r["frac_copy"] >= frac and vs_c is not None and vs_c > 1.0
                goals.append({"what": what, "met": met,
                              "detail": f"{100 * (r['frac_copy'] or 0):.0f}% of copy, "
                                        + (f"{vs_c:.2f}x compile" if vs_c is not None else "compile not run")})
    return goals


def main(argv: Optional[Sequence[str]] = None, ops: Optional[dict] = None, prog: Optional[str] = None) -> int:
    ops = ops if ops is not None else LAYER_NORM_OPS
    args = build_parser(ops, prog).parse_args(argv)
    records, notes = run(args, ops)
    print()
    columns = list(report.DEFAULT_COLUMNS)
    if any(r.get("faults_per_call") is not None for r in records):
        columns.append(report.Column("faults_per_call", "faults/call", "{:.0f}"))
    print(report.format_table(records, columns, separate_on=("op", "shape", "dtype", "direction")))
    print()
    print("Goals:")
    print(report.format_goals(evaluate_goals(records, ops)))
    if notes:
        print()
        print("Notes:")
        for n in notes:
            print(f"  - {n}")
    if not args.no_json and records:  # written case by case in run()
        out_dir = report.resolve_out_dir(args.out, RESULTS_DIR)
        written = [str(report.jsonl_path(out_dir, op_name)) for op_name in dict.fromkeys(r["op"] for r in records)]
        print(f"\nappended {len(records)} JSON lines to {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
