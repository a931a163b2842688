#!/usr/bin/env python
"""Benchmark tforge.attention against PyTorch in the same run, interleaved.

For each shape (batch x seqlen x heads x head_dim), dtype, causal flag and
direction (fwd, bwd, fwdbwd), every usable tforge backend is timed round-robin
with its peers:
  sdpa[:<backend>]  F.scaled_dot_product_attention, once per SDPA backend
                    available on the device (CPU: its flash kernel and math;
                    CUDA: flash, efficient, cudnn)
  eager             softmax(QK^T / sqrt(d)) V, materialising the scores
TFLOP/s use FlashAttention's count: forward 4*B*H*Sq*Sk*D (halved when causal),
backward 2.5x forward. On CUDA, peak memory per candidate is recorded too.
Prints a table and the goals; appends JSON lines to benchmarks/results/attention.jsonl
(or $OUT, or --out DIR).

    python benchmarks/bench_attention.py                 # CPU: 4x1024x8x64 fp32; GPU: bf16 d=128, 4k-16k
    python benchmarks/bench_attention.py --quick
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import uuid
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

import tforge
from tforge import _backend, testing
from tforge.bench import harness, machine, report
from tforge.ops.attention import _head_dim_reason, attention_ref

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_SHAPES = ((4, 1024, 8, 64),)
GPU_SHAPES = ((4, 4096, 16, 128), (2, 8192, 16, 128), (1, 16384, 16, 128))
QUICK_SHAPE = (1, 256, 4, 64)

COLUMNS = [report.Column("op", "op", align="<"),
           report.Column("shape", "shape", lambda s: report.shape_str(s), align="<"),
           report.Column("dtype", "dtype", align="<"), report.Column("causal", "causal", align="<"),
           report.Column("direction", "dir", align="<"), report.Column("backend", "candidate", align="<"),
           report.Column("median_ms", "median ms", "{:.3f}"), report.Column("tflops", "TFLOP/s", "{:.3f}"),
           report.Column("peak_mb", "peak MB", "{:.0f}"), report.Column("ratio", "vs sdpa", "{:.2f}x")]


def flops(direction: str, b: int, s: int, h: int, d: int, causal: bool) -> float:
    fwd = 4.0 * b * h * s * s * d / (2 if causal else 1)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwdbwd": 3.5 * fwd}[direction]


def eager_attention(q, k, v, causal):
    """(B, H, S, D) inputs; the textbook softmax attention that materialises the scores."""
    s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        n = s.shape[-1]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return torch.matmul(torch.softmax(s, -1), v)


def sdpa_backends(device: torch.device) -> dict:
    """name -> context manager selecting that SDPA backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    names = (["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"] if device.type == "cuda"
             else ["FLASH_ATTENTION", "MATH"])
    return {n.split("_")[0].lower(): (lambda b=getattr(SDPBackend, n): sdpa_kernel([b])) for n in names
            if hasattr(SDPBackend, n)}


def make_case(fn: Callable, direction: str, inputs: Sequence[torch.Tensor]) -> Callable[[], object]:
    leaves = [t.detach().clone().requires_grad_(direction != "fwd") for t in inputs]
    if direction == "fwd":
        def run():
            with torch.no_grad():
                return fn(*leaves)
        return run
    if direction == "fwdbwd":
        dout = torch.randn_like(fn(*leaves))

        def run():
            out = fn(*leaves)
            return torch.autograd.grad(out, leaves, dout)
        return run
    out = fn(*leaves)
    dout = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, leaves, dout, retain_graph=True)


def run(args) -> list[dict]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtypes = [DTYPES[d] for d in (args.dtypes or (["bf16"] if device.type == "cuda" else ["fp32"]))]
    shapes = [QUICK_SHAPE] if args.quick else (args.shapes or (GPU_SHAPES if device.type == "cuda" else CPU_SHAPES))
    causals = args.causal if args.causal is not None else ([False, True] if not args.quick else [False])
    minfo, vers = machine.machine_info(device), machine.versions()
    run_id = uuid.uuid4().hex[:8]
    records = []
    for (b, s, h, d) in shapes:
        for dtype in dtypes:
            # Triton on a CPU is its slow interpreter: only when asked for.
            default = [n for n in testing.backend_names(device.type) if n != "torch"]
            backends = [n for n in (args.backends or default)
                        if (_backend.why_unavailable(n, device, dtype) or _head_dim_reason(n, d, dtype)) is None]
            q, k, v = (torch.randn(b, s, h, d, device=device, dtype=dtype) for _ in range(3))
            qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
            for causal in causals:
                # correctness first, on a slice (the reference materialises the scores)
                for name in backends:
                    sl = (slice(0, 1), slice(0, min(s, 256)))
                    got = tforge.attention(q[sl], k[sl], v[sl], causal=causal, backend=name)
                    ref = attention_ref(q[sl], k[sl], v[sl], causal=causal)
                    err = (got.float() - ref.float()).abs().max().item()
                    if err > (1e-3 if dtype == torch.float32 else 5e-2):
                        print(f"warning: backend {name} differs from the reference by {err:.3g}", file=sys.stderr)
                for direction in args.directions:
                    cands = {name: make_case(lambda a, b_, c, n=name: tforge.attention(a, b_, c, causal=causal,
                                                                                      backend=n),
                                             direction, (q, k, v)) for name in backends}
                    for sname, ctx in sdpa_backends(device).items():
                        f = lambda a, b_, c, ctx=ctx: _with(ctx, lambda: F.scaled_dot_product_attention(
                            a, b_, c, is_causal=causal))
                        try:
                            make_case(f, direction, (qt[:1, :, :64], kt[:1, :, :64], vt[:1, :, :64]))()
                        except RuntimeError:
                            continue  # that SDPA backend cannot serve this case
                        cands[f"sdpa:{sname}"] = make_case(f, direction, (qt, kt, vt))
                    if not args.no_eager and s * s * b * h * 4 < 8 * 2**30:
                        cands["eager"] = make_case(lambda a, b_, c: eager_attention(a, b_, c, causal), direction,
                                                   (qt, kt, vt))
                    stats = harness.bench_interleaved(cands, device=device, repeats=args.repeats,
                                                      max_seconds=args.max_seconds)
                    peers = [st.median_ms for n, st in stats.items() if n.startswith("sdpa")]
                    best_sdpa = min(peers) if peers else None
                    fl = flops(direction, b, s, h, d, causal)
                    case_records = []
                    for name, st in stats.items():
                        peak = _peak_mb(cands[name], device)
                        case_records.append(report.make_record(
                            op="attention", shape=(b, s, h, d), dtype=dtype, direction=direction, backend=name,
                            median_ms=st.median_ms, machine=minfo, versions=vers, flops=fl,
                            ratio=best_sdpa / st.median_ms if best_sdpa else None, run_id=run_id, causal=causal,
                            peak_mb=peak))
                    records += case_records
                    _append(args, case_records)
    return records


def _append(args, case_records) -> None:
    """Append one case's JSON lines as soon as it is measured: a run cut short
    (gpu_check.sh's timeouts) keeps everything measured before the cut."""
    if not args.no_json:
        report.append_jsonl(report.jsonl_path(report.resolve_out_dir(args.out), "attention"), case_records)


def _with(ctx_factory, fn):
    with ctx_factory():
        return fn()


def _peak_mb(fn, device) -> Optional[float]:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def goals(records: Sequence[dict]) -> list[dict]:
    out = []
    for direction in ("fwd", "bwd"):
        rs = [r for r in records if r["direction"] == direction and r["backend"] == "cpu"
              and r["dtype"] == "float32" and tuple(r["shape"]) == (4, 1024, 8, 64) and not r["causal"]]
        if rs:
            out.append(dict(what=f"CPU fp32 (4,1024,8,64) {direction} >= 1.0x SDPA", met=rs[0]["ratio"] >= 1.0,
                            detail=f"{rs[0]['ratio']:.2f}x"))
    gpu = [r for r in records if r["backend"] in testing.backend_names("cuda") and r["backend"] != "torch" and r["direction"] == "fwd"
           and r["dtype"] == "bfloat16" and r["shape"][3] == 128]
    if gpu:
        best = max(gpu, key=lambda r: r["tflops"])
        out.append(dict(what="H200 bf16 d=128 fwd >= 450 TFLOP/s", met=best["tflops"] >= 450,
                        detail=f"{best['tflops']:.0f} TFLOP/s ({best['backend']}, {best['shape']})"))
        out.append(dict(what="H200 bf16 d=128 fwd >= 1.0x SDPA's best", met=best["ratio"] >= 1.0,
                        detail=f"{best['ratio']:.2f}x"))
    return out


def parse_shape(text: str):
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"shape must be BxSxHxD, got {text!r}")
    return parts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=lambda s: [parse_shape(v) for v in s.split(",")], default=None)
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=None, help="fp32,bf16,fp16")
    p.add_argument("--directions", type=lambda s: s.split(","), default=["fwd", "bwd", "fwdbwd"])
    p.add_argument("--causal", type=lambda s: [v.strip().lower() in ("1", "true", "yes") for v in s.split(",")],
                   default=None, help="e.g. 0,1 (default both)")
    p.add_argument("--backends", type=lambda s: s.split(","), default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--max-seconds", type=float, default=20.0, help="time budget per case")
    p.add_argument("--no-eager", action="store_true")
    p.add_argument("--quick", action="store_true", help="one small shape (tests, demo)")
    p.add_argument("--out", default=None)
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.max_seconds = 3, 3.0
    records = run(args)
    # the JSON lines were appended case by case in run()
    report.emit(records, COLUMNS, goals(records), "attention", args.out, False,
                separate_on=("shape", "dtype", "causal", "direction"))
    if not args.no_json and records:
        print(f"\n{len(records)} records appended to {report.jsonl_path(report.resolve_out_dir(args.out), 'attention')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
