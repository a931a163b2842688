#!/usr/bin/env python
"""Benchmark tforge.cross_entropy (forward + backward, reduction "mean") against PyTorch and the
model's previous fast path, interleaved in one run.

For each shape (rows x classes), dtype and CPU thread count, timed round-robin:
  tforge:<backend>  every usable tforge backend (Triton only on CUDA)
  eager             F.cross_entropy(logits.float(), target)
  compile           the same under torch.compile (inductor, static shapes)
  chunked           _ChunkedCrossEntropy, GPT's loss before tforge.cross_entropy (copied below from
                    python/tforge/models/gpt.py at 6b86a24)
Each sample is torch.autograd.grad(loss, logits). GB/s counts the least traffic a fused op needs
(read the logits once, write their gradient once); "% copy" is that against the copy bandwidth
measured in this run. Prints a table and appends JSON lines to benchmarks/results/cross_entropy.jsonl
(or $OUT, or --out DIR) case by case. OMP_WAIT_POLICY defaults to PASSIVE (set before torch loads).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_cross_entropy.py --threads 1,2
    python benchmarks/bench_cross_entropy.py --quick --no-compile
"""
from __future__ import annotations

import argparse
import os
import sys
import uuid

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.autograd.function import once_differentiable  # noqa: E402

import tforge  # noqa: E402
from tforge import _backend  # noqa: E402
from tforge.bench import harness, machine, report  # noqa: E402
from tforge.ops.cross_entropy import cross_entropy_ref  # noqa: E402

SHAPES = ((8192, 8192), (4096, 32000))  # the GPT benchmark's logits (T=1024 x 8 and the 32K vocabulary)
QUICK_SHAPE = (512, 4096)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

COLUMNS = [report.Column("shape", "shape", report.shape_str, align="<"), report.Column("dtype", "dtype", align="<"),
           report.Column("threads", "thr"), report.Column("backend", "candidate", align="<"),
           report.Column("median_ms", "median ms", "{:.2f}"), report.Column("gbps", "GB/s", "{:.1f}"),
           report.Column("frac_copy", "% copy", lambda v: f"{100 * v:.0f}%"),
           report.Column("ratio", "vs eager", "{:.2f}x"), report.Column("ratio_vs_compile", "vs compile", "{:.2f}x"),
           report.Column("ratio_vs_chunked", "vs chunked", "{:.2f}x")]


class _ChunkedCrossEntropy(torch.autograd.Function):
    """The prior implementation (gpt.py at 6b86a24), kept verbatim as the peer to beat: softmax per chunk
    of rows into the gradient buffer, -log p[target] (underflowed rows recomputed with logsumexp)."""

    @staticmethod
    def forward(ctx, logits, targets, count, need_grad):
        n = logits.shape[0]
        rows = max(1, (1 << 20 if logits.device.type == "cpu" else 1 << 26) // max(1, logits.shape[1]))
        valid = targets != -100
        safe = torch.where(valid, targets, 0)
        scale = valid.float() / count
        fp32 = logits.dtype == torch.float32
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device) if need_grad else None
        work = None if fp32 and need_grad else torch.empty(min(rows, n), logits.shape[1], dtype=torch.float32,
                                                           device=logits.device)
        p_target = torch.empty(n, dtype=torch.float32, device=logits.device)
        for s in range(0, n, rows):
            chunk = logits[s:s + rows]
            probs = grad[s:s + rows] if work is None else work[:chunk.shape[0]]
            torch.ops.aten._softmax.out(chunk if fp32 else chunk.float(), 1, False, out=probs)
            torch.gather(probs, 1, safe[s:s + rows, None], out=p_target[s:s + rows, None])
            if need_grad:
                sc = scale[s:s + rows, None]
                probs.mul_(sc).scatter_add_(1, safe[s:s + rows, None], -sc)
                if work is not None:
                    grad[s:s + rows].copy_(probs)
        row_loss = -p_target.log()
        tiny = (p_target < 1e-30) & valid
        if bool(tiny.any()):
            idx = tiny.nonzero().squeeze(1)
            exact = torch.logsumexp(logits[idx].float(), -1) - logits[idx, safe[idx]].float()
            row_loss = row_loss.index_copy(0, idx, exact)
        if need_grad:
            ctx.save_for_backward(grad)
        return torch.where(valid, row_loss, 0.0).sum() / count

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        if g.device.type == "cpu" and float(g) == 1.0:
            return grad, None, None, None
        return grad * g.to(grad.dtype), None, None, None


def chunked(x, t):
    return _ChunkedCrossEntropy.apply(x, t, (t != -100).sum().clamp_min(1), True)


def eager(x, t):
    return F.cross_entropy(x.float(), t)


def fwdbwd(fn, x, t):
    return lambda: torch.autograd.grad(fn(x, t), x)


def run(args) -> list[dict]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shapes = [QUICK_SHAPE] if args.quick else args.shapes
    threads = args.threads if device.type == "cpu" else [torch.get_num_threads()]
    info, vers, run_id = machine.machine_info(device), machine.versions(), uuid.uuid4().hex[:8]
    copy = machine.copy_bandwidth(device, 64 * 2**20 if args.quick else None)["copy_gbps"]
    print(f"# {info['cpu']}; GPU {info['gpu']}; copy bandwidth {copy:.1f} GB/s; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}\n")
    records = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        copy_t = copy if len(threads) == 1 else machine.copy_bandwidth(device, 64 * 2**20 if args.quick else None)[
            "copy_gbps"]
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            backends = [b for b in (args.backends or _backend.BACKENDS)
                        if _backend.why_unavailable(b, device, dtype) is None and not (b == "triton" and device.type == "cpu")
                        and (b != "torch" or args.backends)]
            for rows, v in shapes:
                g = torch.Generator().manual_seed(0)
                x = (torch.randn(rows, v, generator=g) * 2).to(device=device, dtype=dtype).requires_grad_()
                t = torch.randint(0, v, (rows,), generator=g).to(device)
                t[::50] = -100
                cands = {f"tforge:{b}": fwdbwd(lambda x, t, _b=b: tforge.cross_entropy(x, t, backend=_b), x, t)
                         for b in backends}
                cands.update(eager=fwdbwd(eager, x, t), chunked=fwdbwd(chunked, x, t))
                if not args.no_compile:
                    torch._dynamo.reset()
                    cands["compile"] = fwdbwd(torch.compile(eager, dynamic=False), x, t)
                ref = cross_entropy_ref(x.detach()[:64], t[:64])
                for b in backends:  # a quick check: the loss of the first rows
                    got = tforge.cross_entropy(x.detach()[:64], t[:64], backend=b)
                    if not torch.allclose(got, ref, rtol=1e-4, atol=1e-4):
                        print(f"warning: tforge:{b} loss {float(got)} differs from the reference {float(ref)}")
                stats = harness.bench_interleaved(cands, device=device, repeats=args.repeats,
                                                  max_seconds=args.max_seconds)
                nbytes = 2 * rows * v * x.element_size()
                peer = {k: stats[k].median_ms if k in stats else None for k in ("eager", "compile", "chunked")}
                case = []
                for name, st in stats.items():
                    def ratio(k):
                        return peer[k] / st.median_ms if peer[k] else None
                    case.append(report.make_record(
                        op="cross_entropy", shape=(rows, v), dtype=dtype, direction="fwdbwd", backend=name,
                        median_ms=st.median_ms, machine=info, versions=vers, nbytes=nbytes, copy_gbps=copy_t,
                        ratio=ratio("eager"), ratio_vs_compile=ratio("compile"), run_id=run_id, threads=n_threads,
                        ratio_vs_chunked=ratio("chunked"), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY")))
                print(report.format_table(case, COLUMNS) + "\n", flush=True)
                records += case
                if not args.no_json:  # appended per case: a run cut short keeps what it measured
                    report.append_jsonl(report.jsonl_path(report.resolve_out_dir(args.out), "cross_entropy"), case)
    return records


def goals(records) -> list[dict]:
    out = []
    for r in records:
        if r["backend"] == "tforge:cpu" and tuple(r["shape"]) == (8192, 8192) and r["dtype"] == "float32":
            out.append(dict(what=f"CPU backend >= _ChunkedCrossEntropy at 8192x8192 fp32, {r['threads']} thread(s)",
                            met=r["ratio_vs_chunked"] >= 1.0, detail=f"{r['ratio_vs_chunked']:.2f}x"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=lambda s: [tuple(int(v) for v in c.split("x")) for c in s.split(",")],
                   default=list(SHAPES), help="ROWSxCLASSES,... (default 8192x8192,4096x32000)")
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=["fp32", "bf16"])
    p.add_argument("--threads", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2],
                   help="CPU thread counts, each run in turn (default 1,2)")
    p.add_argument("--backends", type=lambda s: s.split(","), default=None,
                   help="tforge backends (default: every usable one but the torch reference; Triton on CUDA)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--max-seconds", type=float, default=30.0, help="time budget per case")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--quick", action="store_true", help="one small shape, few repeats")
    p.add_argument("--out", default=None)
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.max_seconds = 3, 3.0
    records = run(args)
    g = goals(records)
    if g:
        print(report.format_goals(g))
    return 0


if __name__ == "__main__":
    sys.exit(main())
