#!/usr/bin/env python
"""Benchmark tforge's int8 GEMM and W8A8 linear against PyTorch in one run,
interleaved.

For each M x N x K (weights in nn.Linear's (N, K) layout):
  int8_matmul:<backend>   exact int32 a @ b.T
  int8_linear:<backend>   the full W8A8 linear: per-token quantisation of x plus
                          the int8 GEMM with the fused dequantising epilogue
  torch.matmul            the float GEMM (fp32 on CPU, bf16 on CUDA): the baseline
  torch._int_mm           PyTorch's int8 GEMM, where the device supports it
GOP/s = 2*M*N*K / time; "vs float" is the speed-up over torch.matmul. Appends
JSON lines to benchmarks/results/int8_gemm.jsonl (or $OUT, or --out DIR).

    python benchmarks/bench_int8_gemm.py
    python benchmarks/bench_int8_gemm.py --shapes 2048x2048x2048 --backends cpu
"""
from __future__ import annotations

import argparse
import sys
import uuid

import torch

from tforge import _backend, testing
from tforge.bench import harness, machine, report
from tforge.ops.int8_gemm import _op_reason, int8_linear, int8_matmul, int8_matmul_ref, quantize_per_channel, \
    quantize_per_token

CPU_SHAPES = ((1, 4096, 4096), (16, 4096, 4096), (512, 4096, 4096), (2048, 2048, 2048))
GPU_SHAPES = CPU_SHAPES + ((8192, 8192, 8192),)
QUICK_SHAPE = (64, 256, 512)

COLUMNS = [report.Column("op", "op", align="<"),
           report.Column("shape", "MxNxK", lambda s: report.shape_str(s), align="<"),
           report.Column("backend", "candidate", align="<"), report.Column("median_ms", "median ms", "{:.3f}"),
           report.Column("gops", "GOP/s", "{:.1f}"), report.Column("ratio", "vs float", "{:.2f}x"),
           report.Column("ratio_vs_int_mm", "vs _int_mm", "{:.2f}x")]


def _int_mm_works(a, b_t) -> bool:
    try:
        torch._int_mm(a, b_t)
        return True
    except (RuntimeError, NotImplementedError):
        return False


def run(args) -> list[dict]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fdtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = [QUICK_SHAPE] if args.quick else (args.shapes or (GPU_SHAPES if device.type == "cuda" else CPU_SHAPES))
    # The backends chosen automatically on this device but the torch reference (timed as a peer): so Triton,
    # on a CPU its slow interpreter, only when asked for.
    default = [n for n in testing.backend_names(device.type) if n != "torch"]
    backends = [n for n in (args.backends or default)
                if (_backend.why_unavailable(n, device, torch.float32) or _op_reason(n, device)) is None]
    minfo, vers = machine.machine_info(device), machine.versions()
    run_id = uuid.uuid4().hex[:8]
    records = []
    for (m, n, k) in shapes:
        x = torch.randn(m, k, device=device)
        w = torch.randn(n, k, device=device)
        xq, xs = quantize_per_token(x, backend="torch")
        wq, ws = quantize_per_channel(w, backend="torch")
        xf, wf = x.to(fdtype), w.to(fdtype)
        exact = int8_matmul_ref(xq[: min(m, 64)], wq)
        cands = {"torch.matmul": lambda: torch.matmul(xf, wf.T)}
        wq_t = wq.T  # _int_mm takes (K, N)
        if _int_mm_works(xq, wq_t):
            cands["torch._int_mm"] = lambda: torch._int_mm(xq, wq_t)
        for name in backends:
            got = int8_matmul(xq[: min(m, 64)], wq, backend=name)
            if not torch.equal(got.cpu(), exact.cpu()):
                print(f"warning: int8_matmul backend {name} is not exact", file=sys.stderr)
            cands[f"int8_matmul:{name}"] = lambda nm=name: int8_matmul(xq, wq, backend=nm)
            cands[f"int8_linear:{name}"] = lambda nm=name: int8_linear(
                *quantize_per_token(x, backend=nm), wq, ws, None, out_dtype=x.dtype, backend=nm)
        stats = harness.bench_interleaved(cands, device=device, repeats=args.repeats, max_seconds=args.max_seconds)
        base = stats["torch.matmul"].median_ms
        int_mm = stats["torch._int_mm"].median_ms if "torch._int_mm" in stats else None
        case_records = []
        for name, st in stats.items():
            op = name.split(":")[0]
            case_records.append(report.make_record(
                op="int8_gemm", shape=(m, n, k), dtype="int8", direction="fwd", backend=name,
                median_ms=st.median_ms, machine=minfo, versions=vers, flops=2.0 * m * n * k, ratio=base / st.median_ms,
                run_id=run_id, candidate_op=op, gops=2.0 * m * n * k / (st.median_ms * 1e-3) / 1e9,
                ratio_vs_int_mm=int_mm / st.median_ms if int_mm else None, float_dtype=str(fdtype)))
        records += case_records
        if not args.no_json:  # appended per shape: a run cut short keeps what it measured
            report.append_jsonl(report.jsonl_path(report.resolve_out_dir(args.out), "int8_gemm"), case_records)
    return records


def goals(records) -> list[dict]:
    out = []
    for r in records:
        if r["backend"] == "int8_matmul:cpu" and tuple(r["shape"]) == (2048, 2048, 2048):
            out.append(dict(what="CPU int8 GEMM >= 1.5x fp32 torch.matmul at 2048^3", met=r["ratio"] >= 1.5,
                            detail=f"{r['ratio']:.2f}x"))
        if r["backend"] in ("int8_matmul:cuda", "int8_matmul:triton") and tuple(r["shape"]) == (8192, 8192, 8192):
            out.append(dict(what=f"H200 {r['backend']} >= 1.6x bf16 matmul at 8192^3", met=r["ratio"] >= 1.6,
                            detail=f"{r['ratio']:.2f}x"))
            if r.get("ratio_vs_int_mm"):
                out.append(dict(what=f"H200 {r['backend']} >= 0.9x torch._int_mm", met=r["ratio_vs_int_mm"] >= 0.9,
                                detail=f"{r['ratio_vs_int_mm']:.2f}x"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=lambda s: [tuple(int(v) for v in t.split("x")) for t in s.split(",")],
                   default=None, help="MxNxK,...")
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
    records = run(args)
    report.emit(records, COLUMNS, goals(records), "int8_gemm", args.out, False, separate_on=("shape",))  # JSON: in run()
    if not args.no_json and records:
        print(f"\n{len(records)} records appended to {report.jsonl_path(report.resolve_out_dir(args.out), 'int8_gemm')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
