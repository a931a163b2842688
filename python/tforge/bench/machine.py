"""What the benchmarks ran on, and the ceilings their numbers are judged against.

``machine_info`` / ``versions`` go into every JSON line, so results from
different machines and builds can be told apart. ``copy_bandwidth`` measures
the device's copy bandwidth (read + write) in the same run as the benchmark:
a memory-bound kernel is judged by its fraction of that, not of a datasheet
number. ``gemm_tflops`` does the same for compute-bound ops (GEMM, attention).
``REFERENCE_CEILINGS`` holds what was measured on the GPU machine before
(DESIGN.md), to compare a run against.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import re

import torch

__all__ = ["machine_info", "versions", "cpu_model", "l2_cache_bytes", "copy_bandwidth", "gemm_tflops",
           "REFERENCE_CEILINGS", "reference_ceiling"]

# Measured on the project's GPU machine (DESIGN.md, "The GPU").
REFERENCE_CEILINGS = {
    "H200": {"copy_gbps": 4300.0, "bf16_gemm_tflops": 790.0},
}


def reference_ceiling(gpu_name: str | None, key: str) -> float | None:
    """The recorded ceiling `key` for a GPU whose name contains a known model."""
    if not gpu_name:
        return None
    for model, ceilings in REFERENCE_CEILINGS.items():
        if model.lower() in gpu_name.lower():
            return ceilings.get(key)
    return None


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _parse_size(text: str) -> int | None:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, flags=re.IGNORECASE)
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2).upper()]


@functools.lru_cache(maxsize=None)
def _cpu_llc_bytes() -> int | None:
    """Largest cache level seen by cpu0 (Linux sysfs), per instance."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    best = None
    try:
        for entry in os.listdir(base):
            if not entry.startswith("index"):
                continue
            try:
                with open(os.path.join(base, entry, "size"), encoding="utf-8") as f:
                    size = _parse_size(f.read())
            except OSError:
                continue
            if size and (best is None or size > best):
                best = size
    except OSError:
        return None
    return best


def l2_cache_bytes(device: torch.device | str) -> int | None:
    """GPU: its L2 size; CPU: the last-level cache size (None when unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    return _cpu_llc_bytes()


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def machine_info(device: torch.device | str = "cpu") -> dict:
    """CPU model and cores, torch's thread count, tforge's CPU kernel ISA, and
    the GPU (name, count, L2, SMs) when `device` is a CUDA device."""
    from tforge import _native
    device = torch.device(device)
    info = {
        "device": device.type,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "threads": torch.get_num_threads(),
        "cpu_isa": _native.cpu_isa(),
        "llc_bytes": _cpu_llc_bytes(),
        "platform": platform.platform(),
        "gpu": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_l2_bytes=int(props.L2_cache_size),
                    gpu_sms=props.multi_processor_count, gpu_memory_bytes=int(props.total_memory),
                    gpu_capability=f"{props.major}.{props.minor}")
    return info


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Python, torch (and its CUDA), triton (without importing it), tforge and
    whether tforge's CUDA kernels were compiled."""
    import tforge
    from tforge import _native
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _dist_version("triton"),
        "tforge": tforge.__version__,
        "tforge_cuda_compiled": _native.cuda_compiled(),
    }


def copy_bandwidth(device: torch.device | str = "cpu", nbytes: int | None = None, *, max_seconds: float = 2.0,
                   repeats: int = 20) -> dict:
    """Measured copy bandwidth: ``dst.copy_(src)`` over `nbytes`, counting the
    read and the write (2 x nbytes per copy). Default size: 1 GiB on CUDA;
    on CPU 8 x the last-level cache, at least 256 MiB, so it streams from DRAM.
    Returns {"copy_gbps", "copy_bytes", "copy_ms"}."""
    from tforge.bench.harness import bench_interleaved
    device = torch.device(device)
    if nbytes is None:
        if device.type == "cuda":
            nbytes = 2**30
        else:
            nbytes = max(256 * 2**20, 8 * (_cpu_llc_bytes() or 0))
    n = max(1, nbytes // 4)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    stats = bench_interleaved({"copy": lambda: dst.copy_(src)}, device=device, warmup=2, repeats=repeats,
                              min_repeats=3, max_seconds=max_seconds, flush=False)["copy"]
    moved = 2 * n * 4
    return {"copy_gbps": moved / (stats.median_ms * 1e-3) / 1e9, "copy_bytes": moved, "copy_ms": stats.median_ms}


def gemm_tflops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16, n: int | None = None, *,
                max_seconds: float = 2.0, repeats: int = 20) -> dict:
    """Measured square GEMM throughput (2 n^3 flop per matmul), the ceiling for
    compute-bound ops. Default n: 8192 on CUDA, 1024 on CPU.
    Returns {"gemm_tflops", "gemm_n", "gemm_dtype", "gemm_ms"}."""
    from tforge.bench.harness import bench_interleaved
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    stats = bench_interleaved({"gemm": lambda: a @ b}, device=device, warmup=2, repeats=repeats, min_repeats=3,
                              max_seconds=max_seconds, flush=False)["gemm"]
    return {"gemm_tflops": 2 * n**3 / (stats.median_ms * 1e-3) / 1e12, "gemm_n": n,
            "gemm_dtype": str(dtype).replace("torch.", ""), "gemm_ms": stats.median_ms}
