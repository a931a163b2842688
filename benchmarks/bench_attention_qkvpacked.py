#!/usr/bin/env python
"""Benchmark tforge.attention_qkvpacked against the ways a model could run attention from
one fused qkv projection, forward + backward (the gradient is taken with respect to the
packed qkv (batch, seqlen, heads_q + 2 * heads_k, head_dim), as a qkv Linear's output),
interleaved in one run:
  qkvpacked:<backend>  tforge.attention_qkvpacked(qkv, num_heads_k=...)
  split:<backend>      q, k, v = qkv.split(...); tforge.attention(q, k, v) (backward: one cat)
  sdpa                 q, k, v transposed to (batch, heads, seqlen, head_dim) and
                       F.scaled_dot_product_attention (enable_gqa for grouped-query heads)
Prints a table ("vs split" = split's ms / this candidate's ms for the same backend, "vs sdpa"
likewise against SDPA) and appends JSON lines to benchmarks/results/attention_qkvpacked.jsonl
(or $OUT, or --out DIR).

    python benchmarks/bench_attention_qkvpacked.py            # CPU fp32: 4x1024 8 heads d64, and GQA 8/2
    python benchmarks/bench_attention_qkvpacked.py --quick
"""
from __future__ import annotations

import argparse
import sys
import uuid

import torch
import torch.nn.functional as F

import tforge
from tforge import _backend
from tforge.bench import harness, machine, report
from tforge.ops.attention import _head_dim_reason

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_SHAPES = ((4, 1024, 8, 8, 64), (4, 1024, 8, 2, 64))  # (batch, seqlen, heads_q, heads_k, head_dim)
GPU_SHAPES = ((4, 4096, 16, 16, 128), (4, 4096, 16, 4, 128))
QUICK_SHAPE = (1, 256, 4, 2, 64)

COLUMNS = [report.Column("shape", "B,S,Hq,Hk,D", lambda s: report.shape_str(s), align="<"),
           report.Column("dtype", "dtype", align="<"), report.Column("causal", "causal", align="<"),
           report.Column("backend", "candidate", align="<"),
           report.Column("median_ms", "median ms", "{:.3f}"), report.Column("tflops", "TFLOP/s", "{:.3f}"),
           report.Column("vs_split", "vs split", "{:.2f}x"), report.Column("ratio", "vs sdpa", "{:.2f}x")]


def flops(b: int, s: int, h: int, d: int, causal: bool) -> float:
    """FlashAttention's count, forward + backward (3.5 x the forward's 4 B H S^2 D, halved when causal)."""
    return 3.5 * 4.0 * b * h * s * s * d / (2 if causal else 1)


def candidates(backends, hq: int, hk: int, causal: bool) -> dict:
    """name -> fn(qkv) -> out."""
    def split(qkv):
        return qkv.split([hq, hk, hk], dim=-2)

    def sdpa(qkv):
        q, k, v = (t.transpose(1, 2) for t in split(qkv))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=hq != hk)
        return out.transpose(1, 2)

    fns = {}
    for name in backends:
        fns[f"qkvpacked:{name}"] = lambda qkv, n=name: tforge.attention_qkvpacked(qkv, causal, num_heads_k=hk,
                                                                                   backend=n)
        fns[f"split:{name}"] = lambda qkv, n=name: tforge.attention(*split(qkv), causal=causal, backend=n)
    fns["sdpa"] = sdpa
    return fns


def fwdbwd(fn, qkv: torch.Tensor):
    leaf = qkv.detach().clone().requires_grad_()
    dout = torch.randn_like(fn(leaf))
    return lambda: torch.autograd.grad(fn(leaf), leaf, dout)


def run(args) -> list[dict]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtypes = [DTYPES[d] for d in (args.dtypes or (["bf16"] if device.type == "cuda" else ["fp32"]))]
    shapes = [QUICK_SHAPE] if args.quick else (GPU_SHAPES if device.type == "cuda" else CPU_SHAPES)
    causals = [False, True] if not args.quick else [True]
    minfo, vers, run_id = machine.machine_info(device), machine.versions(), uuid.uuid4().hex[:8]
    records = []
    for (b, s, hq, hk, d) in shapes:
        for dtype in dtypes:
            default = ["cpu", "cuda", "triton"] if device.type == "cuda" else ["cpu"]
            backends = [n for n in (args.backends or default)
                        if (_backend.why_unavailable(n, device, dtype) or _head_dim_reason(n, d, dtype)) is None]
            qkv = torch.randn(b, s, hq + 2 * hk, d, device=device, dtype=dtype)
            for causal in causals:
                fns = candidates(backends, hq, hk, causal)
                ref = fns["sdpa"](qkv[:1, :256].float())  # correctness first, on a slice
                for name, fn in fns.items():
                    err = (fn(qkv[:1, :256]).float() - ref).abs().max().item()
                    if err > (1e-3 if dtype == torch.float32 else 5e-2):
                        print(f"warning: {name} differs from SDPA by {err:.3g}", file=sys.stderr)
                stats = harness.bench_interleaved({n: fwdbwd(f, qkv) for n, f in fns.items()}, device=device,
                                                  repeats=args.repeats, max_seconds=args.max_seconds)
                case = []
                for name, st in stats.items():
                    split_ms = stats.get("split:" + name.partition(":")[2])
                    case.append(report.make_record(
                        op="attention_qkvpacked", shape=(b, s, hq, hk, d), dtype=dtype, direction="fwdbwd",
                        backend=name, median_ms=st.median_ms, machine=minfo, versions=vers,
                        flops=flops(b, s, hq, d, causal), ratio=stats["sdpa"].median_ms / st.median_ms,
                        vs_split=split_ms.median_ms / st.median_ms if split_ms else None, run_id=run_id,
                        causal=causal))
                records += case
                if not args.no_json:
                    report.append_jsonl(report.jsonl_path(report.resolve_out_dir(args.out), "attention_qkvpacked"),
                                        case)
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=None, help="fp32,bf16,fp16")
    p.add_argument("--backends", type=lambda s: s.split(","), default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--max-seconds", type=float, default=30.0, help="time budget per case")
    p.add_argument("--quick", action="store_true", help="one small shape (tests, demo)")
    p.add_argument("--out", default=None)
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.max_seconds = 3, 3.0
    records = run(args)
    report.emit(records, COLUMNS, [], "attention_qkvpacked", args.out, False, separate_on=("shape", "dtype", "causal"))
    if not args.no_json and records:
        path = report.jsonl_path(report.resolve_out_dir(args.out), "attention_qkvpacked")
        print(f"\n{len(records)} records appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
