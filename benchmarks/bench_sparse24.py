#!/usr/bin/env python
"""Benchmark tforge's 2:4 sparse linear against the dense GEMM on the same (unpacked) weight, in one
run, interleaved.

For each M x N x K (weights in nn.Linear's (N, K) layout, pruned to 2:4 by magnitude):
  sparse24_linear:auto       tforge.sparse24_linear with the automatic backend choice
  sparse24_linear:<backend>  each available backend (cpu, cuda, triton on a GPU; --backends to choose)
  F.linear (dense)           the dense GEMM on the unpacked weight: the peer ("vs dense")
  torch semi-structured      on CUDA: F.linear with torch.sparse.to_sparse_semi_structured's weight
TFLOP/s count dense-equivalent FLOPs (2*M*N*K) so the numbers compare directly with the dense GEMM.
fp32 on CPU, bf16 on CUDA. Appends JSON lines to benchmarks/results/sparse24.jsonl (or $OUT, or --out).

    python benchmarks/bench_sparse24.py
    python benchmarks/bench_sparse24.py --shapes 512x4096x4096 --backends cpu
"""
from __future__ import annotations

import argparse
import sys
import uuid

import torch
import torch.nn.functional as F

from tforge import _backend, testing
from tforge.bench import harness, machine, report
from tforge.ops._sparse24_masks import nm_mask
from tforge.ops.sparse24 import _linear_reason, pack_2to4, sparse24_linear, unpack_2to4
from tforge.testing import max_error, tolerances

SHAPES = ((1, 4096, 4096), (64, 4096, 4096), (512, 4096, 4096), (4096, 4096, 4096))
QUICK_SHAPE = (64, 256, 512)

COLUMNS = [report.Column("shape", "MxNxK", lambda s: report.shape_str(s), align="<"),
           report.Column("dtype", "dtype", align="<"),
           report.Column("backend", "candidate", align="<"), report.Column("median_ms", "median ms", "{:.3f}"),
           report.Column("tflops", "TFLOP/s (dense-eq.)", "{:.3f}"), report.Column("ratio", "vs dense", "{:.2f}x"),
           report.Column("check", "check", align="<")]


def _semi_structured(w):
    """torch's 2:4 weight (cuSPARSELt / CUTLASS), or None where this build or GPU lacks it."""
    try:
        from torch.sparse import to_sparse_semi_structured
        return to_sparse_semi_structured(w)
    except Exception as exc:  # unsupported dtype / shape / GPU / build
        print(f"note: torch semi-structured sparsity unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def _check(fn, ref, dtype, base_err: float) -> str:
    """ref: the fp64 product; base_err: dense F.linear's own max error against it at this dtype.
    A candidate passes with at most twice that error plus the dtype's relative tolerance of the
    output's scale (K-long sums in another order, e.g. sequential instead of blocked, round
    differently; a fixed elementwise tolerance would be wrong at large K)."""
    try:
        got = fn()
    except Exception as exc:  # a broken candidate is reported, not fatal to the run
        return f"error: {type(exc).__name__}: {exc}"
    if got.shape != ref.shape:
        return "wrong shape"
    err = max_error(got, ref)
    atol, rtol = tolerances(dtype)
    bound = 2 * base_err + atol + rtol * ref.abs().max().item()
    return "ok" if err <= bound else f"max err {err:.3g} > {bound:.3g} (dense: {base_err:.3g})"


def run(args) -> list[dict]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = args.shapes or ([QUICK_SHAPE] if args.quick else SHAPES)
    # The backends chosen automatically on this device but the torch reference (timed as a peer): so Triton,
    # on a CPU its slow interpreter, only when asked for.
    default = [n for n in testing.backend_names(device.type) if n != "torch"]
    backends = [n for n in (args.backends or default)
                if (_backend.why_unavailable(n, device, dtype) or _linear_reason(n, device, dtype)) is None]
    minfo, vers = machine.machine_info(device), machine.versions()
    run_id = uuid.uuid4().hex[:8]
    records = []
    for (m, n, k) in shapes:
        torch.manual_seed(0)
        w = torch.randn(n, k, device=device, dtype=dtype)
        w = w * nm_mask(w.float().abs(), 2, 4)
        packed = pack_2to4(w)
        dense = unpack_2to4(packed)
        x = torch.randn(m, k, device=device, dtype=dtype)
        x_chk = x[: min(m, 64)]
        ref = F.linear(x_chk.double(), dense.double())
        base = max_error(F.linear(x_chk, dense), ref)
        cands = {"F.linear (dense)": lambda: F.linear(x, dense)}
        checks = {"F.linear (dense)": _check(lambda: F.linear(x_chk, dense), ref, dtype, base)}
        cands["sparse24_linear:auto"] = lambda: sparse24_linear(x, packed)
        checks["sparse24_linear:auto"] = _check(lambda: sparse24_linear(x_chk, packed), ref, dtype, base)
        for name in backends:
            cands[f"sparse24_linear:{name}"] = lambda nm=name: sparse24_linear(x, packed, backend=nm)
            checks[f"sparse24_linear:{name}"] = _check(lambda nm=name: sparse24_linear(x_chk, packed, backend=nm),
                                                       ref, dtype, base)
        if device.type == "cuda":
            ws = _semi_structured(w)
            if ws is not None:
                status = _check(lambda: F.linear(x_chk, ws), ref, dtype, base)  # same shape as timed when M <= 64
                if not status.startswith("error"):
                    cands["torch semi-structured"] = lambda: F.linear(x, ws)
                    checks["torch semi-structured"] = status
        cands = {name: fn for name, fn in cands.items() if not checks[name].startswith("error")}
        for name, status in checks.items():
            if status != "ok":
                print(f"warning: {name} at {m}x{n}x{k}: {status}", file=sys.stderr)
        stats = harness.bench_interleaved(cands, device=device, repeats=args.repeats, max_seconds=args.max_seconds,
                                          working_set_bytes=(m * k + n * k + m * n) * x.element_size())
        base = stats["F.linear (dense)"].median_ms
        case_records = []
        for name, st in stats.items():
            case_records.append(report.make_record(
                op="sparse24", shape=(m, n, k), dtype=dtype, direction="fwd", backend=name, median_ms=st.median_ms,
                machine=minfo, versions=vers, flops=2.0 * m * n * k, ratio=base / st.median_ms, run_id=run_id,
                device=device.type, check=checks[name], weight_bytes_dense=dense.numel() * dense.element_size(),
                weight_bytes_packed=packed.nbytes))
        records += case_records
        if not args.no_json:  # appended per shape: a run cut short keeps what it measured
            report.append_jsonl(report.jsonl_path(report.resolve_out_dir(args.out), "sparse24"), case_records)
    return records


GOALS = (((512, 4096, 4096), "float32", "cpu", 1.3, "CPU fp32 sparse24_linear >= 1.3x dense at M=512"),
         ((4096, 4096, 4096), "bfloat16", "cuda", 1.3, "GPU bf16 sparse24_linear >= 1.3x dense at 4096^3"),
         ((64, 4096, 4096), "bfloat16", "cuda", None, "GPU bf16 sparse24_linear > 1x dense at M=64"))


def goals(records) -> list[dict]:
    """Each goal measured in this run: met by the fastest correct sparse24_linear candidate."""
    out = []
    for shape, dt, device, target, what in GOALS:
        rows = [r for r in records if tuple(r["shape"]) == shape and r["dtype"] == dt and r["device"] == device]
        if not rows:
            continue
        ours = [r for r in rows if r["backend"].startswith("sparse24_linear:") and r["check"] == "ok"]
        if not ours:
            out.append(dict(what=what, met=False, detail="no correct sparse24_linear candidate"))
            continue
        top = max(ours, key=lambda r: r["ratio"])
        met = top["ratio"] > 1.0 if target is None else top["ratio"] >= target
        out.append(dict(what=what, met=met, detail=f"{top['ratio']:.2f}x ({top['backend']})"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=lambda s: [tuple(int(v) for v in t.split("x")) for t in s.split(",")],
                   default=None, help="MxNxK,... (K a multiple of 4)")
    p.add_argument("--backends", type=lambda s: s.split(","), default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--max-seconds", type=float, default=20.0, help="time budget per shape")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.max_seconds = 3, 3.0
    for shape in args.shapes or ():
        if len(shape) != 3 or shape[2] % 4 != 0 or min(shape) < 1:
            p.error(f"--shapes: each entry is MxNxK with K a multiple of 4, got {'x'.join(map(str, shape))}")
    records = run(args)
    report.emit(records, COLUMNS, goals(records), "sparse24", args.out, False, separate_on=("shape",))  # JSON: in run()
    if not args.no_json and records:
        print(f"\n{len(records)} records appended to {report.jsonl_path(report.resolve_out_dir(args.out), 'sparse24')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
