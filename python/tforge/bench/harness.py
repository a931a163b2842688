"""Timing harness shared by every benchmark (norms now; attention and int8 GEMM later).

The one rule that matters on a shared, noisy machine: candidates and their
peers are timed *interleaved* -- round-robin A B C, B C A, C A B, ... -- so a
burst of noise lands on all of them and their ratio survives it. Each candidate
gets one sample per round; the result is the median over rounds.

CPU samples use time.perf_counter (a sample may hold several calls when one
call is too short to time). CUDA samples use torch.cuda.Event pairs on the
current stream; before each sample the L2 is flushed (a 2 x L2 buffer is
zeroed) when the working set would otherwise stay cached between samples.
Each case has a time budget, so a benchmark stays short however slow a
candidate turns out. ``do_bench`` gives triton.testing.do_bench's calling
convention for single functions, without needing triton.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None

__all__ = ["Stats", "bench_interleaved", "do_bench", "L2Flusher", "quantile", "malloc_reuse"]


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]) of a non-empty sequence."""
    if not values:
        raise ValueError("quantile of an empty sequence")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile: q must be in [0, 1], got {q}")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Stats:
    """Per-call times (ms) of one candidate, one entry per round."""
    name: str
    times_ms: list[float] = field(default_factory=list)
    inner: int = 1  # calls per sample
    faults: list[float] = field(default_factory=list)  # CPU: minor page faults per call, one per round

    @property
    def n(self) -> int:
        return len(self.times_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.times_ms)

    def quantile_ms(self, q: float) -> float:
        return quantile(self.times_ms, q)

    def ratio_to(self, peer: "Stats") -> float:
        """Speed-up over `peer`: peer median / own median (> 1: we are faster)."""
        return peer.median_ms / self.median_ms

    def paired_ratio_to(self, peer: "Stats") -> float:
        """Median over rounds of peer_time / own_time: pairs samples taken
        moments apart, so slow phases of the machine cancel round by round."""
        k = min(self.n, peer.n)
        return statistics.median(peer.times_ms[i] / self.times_ms[i] for i in range(k))

    @property
    def faults_per_call(self) -> float | None:
        """Median minor page faults per call (CPU on Linux/macOS; else None)."""
        return statistics.median(self.faults) if self.faults else None

    def summary(self) -> dict:
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "p20_ms": self.quantile_ms(0.2),
                "p80_ms": self.quantile_ms(0.8), "repeats": self.n, "inner": self.inner,
                "faults_per_call": self.faults_per_call}


class L2Flusher:
    """Evicts the GPU L2 (on CPU: the last-level cache) by zeroing a buffer
    twice its size (what triton.testing.do_bench does), so every sample reads
    its inputs from device memory."""

    def __init__(self, device: torch.device | str, l2_bytes: int | None = None):
        from tforge.bench.machine import l2_cache_bytes
        device = torch.device(device)
        self.l2_bytes = l2_bytes or l2_cache_bytes(device) or 64 * 2**20
        self.buf = torch.empty(2 * self.l2_bytes // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buf.zero_()


def malloc_reuse() -> bool:
    """Make glibc serve every allocation from its heap and never give memory
    back (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=max), so a tensor freed by
    one call is reused, already faulted in, by the next. Without this, CPU
    outputs of 32 MiB and more are fresh mmaps whose first-touch page faults
    can outweigh the kernel, and allocator history decides which candidate
    pays them. Opt-in: it measures kernels, not what a default process sees.
    Returns False where it cannot apply (not glibc)."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    ok_trim = mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))
    ok_mmap = mallopt(M_MMAP_MAX, ctypes.c_int(0))
    return bool(ok_trim and ok_mmap)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _minor_faults() -> int | None:
    """Minor page faults of this process so far (None where unsupported)."""
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class _CpuSampler:
    """Times `inner` back-to-back calls with a wall clock; per-call ms. Also
    counts the page faults of the sample (read outside the timed span): on
    CPU, first touch of freshly mapped output memory can cost more than the
    kernel, and allocator history decides which candidate pays it."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.faults: list[float | None] = []

    def sample(self, fn: Callable[[], Any], inner: int, flush: Callable[[], None] | None) -> Callable[[], float]:
        if flush is not None:
            flush()
        f0 = _minor_faults()
        t0 = self.clock()
        for _ in range(inner):
            fn()
        dt = (self.clock() - t0) * 1e3 / inner
        f1 = _minor_faults()
        self.faults.append(None if f0 is None else (f1 - f0) / inner)
        return lambda: dt

    def finish_round(self) -> None:
        pass


class _CudaSampler:
    """Records an event pair around each sample; the elapsed times are read
    after the round's single synchronize, so the GPU never idles between
    candidates waiting for the host."""

    def __init__(self, device: torch.device):
        self.device = device

    def sample(self, fn: Callable[[], Any], inner: int, flush: Callable[[], None] | None) -> Callable[[], float]:
        if flush is not None:
            flush()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        return lambda: start.elapsed_time(end) / inner

    def finish_round(self) -> None:
        torch.cuda.synchronize(self.device)


def bench_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 50,
    min_repeats: int = 5,
    max_seconds: float = 10.0,
    min_sample_ms: float | None = None,
    flush: bool | str | Callable[[], None] = "auto",
    working_set_bytes: int | None = None,
    clock: Callable[[], float] | None = None,
    on_call: Callable[[str], None] | None = None,
) -> dict[str, Stats]:
    """Time every function in `fns` interleaved; returns {name: Stats}.

    warmup: untimed calls of each function (interleaved) before timing.
    repeats: rounds wanted; fewer (but at least min_repeats) when the budget
        max_seconds, counted from the start of this call, would be exceeded.
    min_sample_ms: a sample repeats a short call until it lasts this long
        (default 1 ms on CPU, 0 on CUDA; never with an L2 flush).
    flush: True, False, "auto" (on CUDA only, when working_set_bytes is unknown
        or below 2 x L2) or a callable run before each sample, outside the timing.
    clock: seconds, for CPU samples and the budget (tests pass a fake one).
    on_call: called with the candidate's name before each timed sample (tests).
    """
    if not fns:
        raise ValueError("bench_interleaved: nothing to time")
    if repeats < 1 or min_repeats < 1:
        raise ValueError("bench_interleaved: repeats and min_repeats must be >= 1")
    device = torch.device(device)
    clock = clock or time.perf_counter
    names = list(fns)

    flush_fn: Callable[[], None] | None
    if callable(flush):
        flush_fn = flush
    elif flush is True or (flush == "auto" and device.type == "cuda"):
        flusher = L2Flusher(device)
        if flush == "auto" and working_set_bytes is not None and working_set_bytes >= 2 * flusher.l2_bytes:
            flusher = None
        flush_fn = flusher
    else:
        flush_fn = None
    if min_sample_ms is None:
        min_sample_ms = 1.0 if device.type == "cpu" else 0.0
    if flush_fn is not None:
        min_sample_ms = 0.0  # one call per sample: the flush must precede each call
    sampler = _CudaSampler(device) if device.type == "cuda" else _CpuSampler(clock)

    t_start = clock()
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection inside one candidate's sample would skew it
    try:
        for _ in range(max(warmup, 1)):
            for name in names:
                fns[name]()
        _sync(device)

        # One calibration round: per-call cost, hence calls per sample and rounds.
        per_call_ms = {}
        readers = {name: sampler.sample(fns[name], 1, flush_fn) for name in names}
        sampler.finish_round()
        for name in names:
            per_call_ms[name] = max(readers[name](), 1e-6)
        inner = {name: 1 if min_sample_ms <= 0 else max(1, math.ceil(min_sample_ms / per_call_ms[name]))
                 for name in names}
        round_s = sum(per_call_ms[n] * inner[n] for n in names) / 1e3
        left_s = max_seconds - (clock() - t_start)
        rounds = max(min_repeats, min(repeats, int(left_s / round_s) if round_s > 0 else repeats))

        stats = {name: Stats(name, inner=inner[name]) for name in names}
        for r in range(rounds):
            if r >= min_repeats and clock() - t_start > max_seconds:
                break
            order = names[r % len(names):] + names[:r % len(names)]  # rotate: no fixed position
            readers = {}
            for name in order:
                if on_call is not None:
                    on_call(name)
                readers[name] = sampler.sample(fns[name], inner[name], flush_fn)
                if isinstance(sampler, _CpuSampler) and sampler.faults[-1] is not None:
                    stats[name].faults.append(sampler.faults[-1])
            sampler.finish_round()
            for name in order:
                stats[name].times_ms.append(readers[name]())
    finally:
        if gc_was_enabled:
            gc.enable()
    return stats


def do_bench(fn: Callable[[], Any], warmup: float = 25, rep: float = 100, grad_to_none=None,
             quantiles: Sequence[float] | None = None, return_mode: str = "median",
             device: torch.device | str | None = None):
    """triton.testing.do_bench's calling convention: warmup and rep in ms of
    run time; returns ms (the given quantiles, or one value per return_mode:
    "median" (our default; triton's is "mean"), "mean", "min", "max", "all").
    Device: CUDA when available, else CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)

    def call():
        if grad_to_none is not None:
            for t in grad_to_none:
                t.grad = None
        return fn()

    call()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(3):
        call()
    _sync(device)
    est_ms = max((time.perf_counter() - t0) * 1e3 / 3, 1e-4)
    n_warmup = max(1, int(warmup / est_ms))
    n_repeat = max(1, int(rep / est_ms))
    stats = bench_interleaved({"fn": call}, device=device, warmup=n_warmup, repeats=n_repeat, min_repeats=1,
                              max_seconds=max(1.0, 4 * (warmup + rep) / 1e3), min_sample_ms=0.0)["fn"]
    times = stats.times_ms
    if quantiles is not None:
        out = [quantile(times, q) for q in quantiles]
        return out[0] if len(out) == 1 else out
    if return_mode == "all":
        return list(times)
    modes = {"median": statistics.median, "mean": statistics.fmean, "min": min, "max": max}
    if return_mode not in modes:
        raise ValueError(f"do_bench: return_mode must be one of {', '.join([*modes, 'all'])}, got {return_mode!r}")
    return modes[return_mode](times)
