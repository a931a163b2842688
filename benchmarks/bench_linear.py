#!/usr/bin/env python
"""Benchmark PyTorch's oneDNN matmul against plain torch.nn.Linear (F.linear) on
CPU, with autograd, at the GPT benchmark's shapes (8192 tokens, d_model 384,
vocab 8192), interleaved.

It is the record behind a decision: tforge's models once ran fp32 CPU Linear
layers through the private torch.ops.mkldnn._linear_pointwise; measured here it
did not pay on an Intel Xeon (0.92-0.93x F.linear over a training step's Linear
layers), so that path and tforge.linear / tforge.nn.Linear were removed and the
models use torch.nn.Linear (benchmarks/results/linear.md). Run this on another
CPU to re-check; nothing in tforge uses the oneDNN path.

Candidates, same weights, called as a model calls them:
  nn.Linear      torch.nn.Linear (F.linear, PyTorch's autograd): the peer
  onednn         y and dx through torch.ops.mkldnn._linear_pointwise, dW by mm, in
                 an autograd.Function: the CPU path models/gpt.py used to take.
When this torch has no working torch.ops.mkldnn._linear_pointwise the benchmark
prints why and skips (exit status 0, nothing recorded).
Directions: fwd (under torch.no_grad) and fwdbwd (x and the parameters require
grad; forward, then torch.autograd.grad for dx, dW (, db)). Each case is timed
for each thread count (torch.set_num_threads) with OMP_WAIT_POLICY=PASSIVE
(set before torch is imported unless already set), so idle OpenMP threads sleep
instead of spinning on a shared machine. Wall time (perf_counter, medians over
interleaved rounds) and CPU time (process_time, all threads, medians over the
same rounds) are both recorded; ratios are speed-ups over nn.Linear in the same run.

    python benchmarks/bench_linear.py                       # all shapes, 1 and 2 threads
    python benchmarks/bench_linear.py --quick --no-json
    python benchmarks/bench_linear.py --shapes qkv,lm_head --threads 1 --malloc-reuse
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch's OpenMP starts: before `import torch`

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Optional, Sequence  # noqa: E402

import torch  # noqa: E402

from tforge.bench import harness, machine, report  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OP = "linear"
# (tokens M, in_features K, out_features N) of the GPT benchmark (benchmarks/bench_train.py: 6 layers,
# d_model 384, MLP 4x, vocab 8192, 8192 tokens per batch, no biases).
SHAPES = {
    "qkv": (8192, 384, 1152),
    "attn_out": (8192, 384, 384),
    "mlp_up": (8192, 384, 1536),
    "mlp_down": (8192, 1536, 384),
    "lm_head": (8192, 384, 8192),
}
QUICK_SHAPE = {"quick": (256, 96, 160)}
DIRECTIONS = ("fwd", "fwdbwd")
PEER = "nn.Linear"


# ---------------------------------------------------------------- the oneDNN contender (private torch op)

def _onednn_mm(a2: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(a2, w, None, "none", [], "")


def onednn_unusable_reason() -> Optional[str]:
    """None when this torch's private oneDNN linear exists and computes a @ w^T (w plain and
    transposed, as the forward and the dx GEMM call it); else why not."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (torch.backends.mkldnn.is_available() is False)"
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return "this torch has no torch.ops.mkldnn._linear_pointwise"
    a = torch.arange(6.0).view(2, 3)
    w = torch.arange(12.0).view(4, 3) - 5
    dy = torch.arange(8.0).view(2, 4) - 3
    try:
        ok = torch.equal(_onednn_mm(a, w), a @ w.t()) and torch.equal(_onednn_mm(dy, w.t()), dy @ w)
    except Exception as e:  # the op's signature or support changed
        return f"torch.ops.mkldnn._linear_pointwise failed on a 2 x 3 probe: {type(e).__name__}: {e}"
    return None if ok else "torch.ops.mkldnn._linear_pointwise computed a wrong a @ w^T on a 2 x 3 probe"


def onednn_usable() -> bool:
    return onednn_unusable_reason() is None


class OneDnnLinear(torch.autograd.Function):
    """y = x W^T + b with oneDNN for y and dx, mm for dW (models/gpt.py's former _OneDnnLinear)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1])
        y = torch.ops.mkldnn._linear_pointwise(x2, weight, bias, "none", [], "")
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x2, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = _onednn_mm(dy2, weight.t()).view(*dy.shape[:-1], weight.shape[1]) if ctx.needs_input_grad[0] else None
        dw = dy2.t().mm(x2) if ctx.needs_input_grad[1] else None
        db = dy2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


class OneDnnModule(torch.nn.Linear):
    def forward(self, x):
        return OneDnnLinear.apply(x, self.weight, self.bias)


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark PyTorch's oneDNN linear (torch.ops.mkldnn._linear_pointwise) "
                                "against torch.nn.Linear on CPU with autograd (interleaved), print a table and "
                                "append JSON lines.")
    p.add_argument("--shapes", type=_csv, default=None, help=f"comma-separated, from {','.join(SHAPES)} (default: all)")
    p.add_argument("--directions", type=_csv, default=list(DIRECTIONS), help="comma-separated fwd,fwdbwd")
    p.add_argument("--threads", type=lambda s: [int(v) for v in _csv(s)], default=[1, 2],
                   help="comma-separated torch thread counts, each a separate set of cases (default 1,2)")
    p.add_argument("--bias", action="store_true", help="layers with a bias (the GPT benchmark has none)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per case at most (default 15; quick 5)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="time budget per case, warm-up included (default 30; quick 1)")
    p.add_argument("--malloc-reuse", action="store_true",
                   help="glibc: reuse freed memory instead of fresh mmaps (no first-touch page faults), "
                        "to compare GEMMs rather than allocations; recorded in the JSON")
    p.add_argument("--quick", action="store_true", help="one small shape, few repeats (tests)")
    p.add_argument("--out", default=None, help="folder for linear.jsonl (default: $OUT if set, else benchmarks/results)")
    p.add_argument("--no-json", action="store_true", help="print only; write no JSON lines")
    return p


def make_modules(k: int, n: int, bias: bool, seed: int = 0) -> dict[str, torch.nn.Module]:
    """The peer and the oneDNN module, holding the same parameters."""
    torch.manual_seed(seed)
    peer = torch.nn.Linear(k, n, bias=bias)
    onednn = OneDnnModule(k, n, bias=bias)
    onednn.load_state_dict(peer.state_dict())
    return {PEER: peer, "onednn": onednn}


def direction_fn(direction: str, mod: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], object]:
    if direction == "fwd":
        def fwd():
            with torch.no_grad():
                return mod(x)
        return fwd
    xg = x.detach().requires_grad_(True)
    leaves = [xg, *mod.parameters()]
    return lambda: torch.autograd.grad(mod(xg), leaves, dy)


def check(mods: dict, x: torch.Tensor, dy: torch.Tensor) -> dict[str, str]:
    """'ok' or what differs: each candidate's output and gradients against nn.Linear's
    (relative norm error, fp32: the GEMMs may sum in another order)."""
    out = {}
    xg = x.detach().requires_grad_(True)
    peer = mods[PEER]
    y_ref = peer(xg)
    g_ref = torch.autograd.grad(y_ref, [xg, *peer.parameters()], dy)
    for name, m in mods.items():
        if name == PEER:
            continue
        y = m(xg)
        g = torch.autograd.grad(y, [xg, *m.parameters()], dy)
        errs = [((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
                for a, b in zip((y, *g), (y_ref, *g_ref))]
        out[name] = "ok" if max(errs) <= 1e-5 else f"relative error {max(errs):.2g} vs nn.Linear"
    return out


def linear_flops(direction: str, m: int, k: int, n: int) -> float:
    """fwd: one GEMM (2MKN); fwdbwd: three (y, dx, dW)."""
    return 2.0 * m * k * n * (1 if direction == "fwd" else 3)


class CpuTimes:
    """CPU time (process_time: every thread of the process) of each call of each candidate, kept
    only once the harness starts its timed rounds (it calls on_call before each timed sample)."""

    def __init__(self, names: Sequence[str]):
        self.timing = False
        self.per_sample: dict[str, list[float]] = {n: [] for n in names}
        self._acc: dict[str, list[float]] = {n: [] for n in names}

    def wrap(self, name: str, fn: Callable[[], object]) -> Callable[[], object]:
        def timed():
            t0 = time.process_time()
            fn()
            if self.timing:
                self._acc[name].append(time.process_time() - t0)
        return timed

    def on_call(self, name: str) -> None:
        self.timing = True
        for n, acc in self._acc.items():  # close the previous sample of every candidate
            if acc:
                self.per_sample[n].append(statistics.fmean(acc) * 1e3)
                acc.clear()

    def finish(self) -> None:
        self.on_call("")

    def median_ms(self, name: str) -> Optional[float]:
        v = self.per_sample[name]
        return statistics.median(v) if v else None


def run(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    unknown = [s for s in args.shapes or () if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown shape name(s) {', '.join(unknown)}; expected {', '.join(SHAPES)}")
    shapes = QUICK_SHAPE if args.quick else {s: SHAPES[s] for s in (args.shapes or SHAPES)}
    bad = [d for d in args.directions if d not in DIRECTIONS]
    if bad:
        raise SystemExit(f"unknown direction(s) {', '.join(bad)}; expected {', '.join(DIRECTIONS)}")
    if any(t < 1 for t in args.threads):
        raise SystemExit("--threads must be >= 1")
    repeats = args.repeats or (5 if args.quick else 15)
    max_seconds = args.max_seconds or (1.0 if args.quick else 30.0)
    notes: list[str] = []
    malloc_reuse = harness.malloc_reuse() if args.malloc_reuse else False
    if args.malloc_reuse and not malloc_reuse:
        notes.append("--malloc-reuse had no effect (not glibc)")
    vers = machine.versions()
    run_id = f"{report.timestamp()}-{uuid.uuid4().hex[:8]}"
    print(f"# {machine.cpu_model()}; torch {vers['torch']}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
          + ("; malloc reuse on" if malloc_reuse else ""), flush=True)
    out_dir = None if args.no_json else report.resolve_out_dir(args.out, RESULTS_DIR)
    records: list[dict] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        info = machine.machine_info("cpu")
        for shape_name, (m, k, n) in shapes.items():
            g = torch.Generator().manual_seed(1)
            x = torch.randn(m, k, generator=g)
            dy = torch.randn(m, n, generator=g)
            mods = make_modules(k, n, args.bias)
            checks = check(mods, x, dy)
            for name, c in checks.items():
                if c != "ok":
                    notes.append(f"CHECK FAILED {shape_name} {name}: {c}")
            for direction in args.directions:
                cpu = CpuTimes(list(mods))
                fns = {name: cpu.wrap(name, direction_fn(direction, mod, x, dy)) for name, mod in mods.items()}
                load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                stats = harness.bench_interleaved(fns, device="cpu", warmup=2, repeats=repeats,
                                                  min_repeats=3 if args.quick else 5, max_seconds=max_seconds,
                                                  on_call=cpu.on_call)
                cpu.finish()
                peer, peer_cpu = stats[PEER], cpu.median_ms(PEER)
                case = []
                for name, st in stats.items():
                    cpu_ms = cpu.median_ms(name)
                    rec = report.make_record(
                        op=OP, shape=(m, k, n), dtype=torch.float32, direction=direction, backend=name,
                        median_ms=st.median_ms, machine=info, versions=vers, run_id=run_id,
                        flops=linear_flops(direction, m, k, n), ratio=st.ratio_to(peer),
                        ratio_paired=st.paired_ratio_to(peer), shape_name=shape_name, bias=args.bias,
                        cpu_ms=cpu_ms, cpu_ratio=(peer_cpu / cpu_ms) if cpu_ms and peer_cpu else None,
                        min_ms=st.min_ms, p20_ms=st.quantile_ms(0.2), p80_ms=st.quantile_ms(0.8),
                        repeats=st.n, inner=st.inner, faults_per_call=st.faults_per_call,
                        kind="peer" if name == PEER else "tforge", check=checks.get(name),
                        quick=bool(args.quick), malloc_reuse=malloc_reuse,
                        threads=threads, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), device="cpu",
                        loadavg=load0)
                    case.append(rec)
                records += case
                if out_dir is not None:
                    report.append_jsonl(report.jsonl_path(out_dir, OP), case)
                line = "  ".join(f"{r['backend']} {r['median_ms']:.1f} ms" + (
                    "" if r["backend"] == PEER else f" ({r['ratio']:.3f}x, cpu {r['cpu_ratio'] or 0:.3f}x)")
                    for r in case)
                print(f"{threads}t {shape_name:9s} {direction:6s}: {line}", flush=True)
    return records, notes


COLUMNS = [
    report.Column("threads", "thr"),
    report.Column("shape_name", "layer", align="<"),
    report.Column("shape", "M x K x N", lambda s: report.shape_str(s), align="<"),
    report.Column("direction", "dir", align="<"),
    report.Column("backend", "module", align="<"),
    report.Column("median_ms", "median ms", "{:.2f}"),
    report.Column("tflops", "GFLOP/s", lambda v: f"{1e3 * v:.0f}"),
    report.Column("ratio", "vs nn.Linear", "{:.3f}x"),
    report.Column("ratio_paired", "paired", "{:.3f}x"),
    report.Column("cpu_ratio", "CPU time", "{:.3f}x"),
]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    reason = onednn_unusable_reason()
    if reason is not None:
        print(f"bench_linear: skipped: {reason}; there is nothing to compare nn.Linear with")
        return 0
    records, notes = run(args)
    print()
    print(report.format_table(records, COLUMNS, separate_on=("threads", "shape_name", "direction")))
    if notes:
        print("\nNotes:")
        for note in notes:
            print(f"  - {note}")
    if not args.no_json and records:
        print(f"\nappended {len(records)} JSON lines to {report.jsonl_path(report.resolve_out_dir(args.out, RESULTS_DIR), OP)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
