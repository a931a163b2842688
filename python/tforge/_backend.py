"""Backend registry and selection.

Backends: ``cpu`` (C++ kernels in tforge._C), ``cuda`` (hand-written CUDA in
tforge._C), ``triton`` and ``torch`` (the pure-PyTorch reference math).
``backend=None`` picks the fastest one that can serve the tensor's device and
dtype; an explicitly requested backend that cannot serve the input raises.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Callable, Mapping

import torch

from tforge import _native

BACKENDS = ("cpu", "cuda", "triton", "torch")

# Preference order per device when backend=None. From benchmarks/results/:
# the C++ kernels beat eager PyTorch on CPU; on GPU the hand-written CUDA
# kernels come first, Triton second (to be confirmed on the H200).
_PREFERENCE = {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")}

# Dtypes each native/triton backend serves (torch serves every floating dtype).
_DTYPES = {
    "cpu": (torch.float32, torch.bfloat16),
    "cuda": (torch.float32, torch.bfloat16, torch.float16),
    "triton": (torch.float32, torch.bfloat16, torch.float16),
    "torch": (torch.float32, torch.bfloat16, torch.float16, torch.float64),
}

# use_backend() overrides, innermost last (None: automatic). A ContextVar, not a global list: each thread
# (and asyncio task) sees only its own blocks, so one thread's use_backend cannot reroute another's ops.
_stack: contextvars.ContextVar[tuple] = contextvars.ContextVar("tforge_backend_stack", default=())


@torch.compiler.assume_constant_result
def _traced_stack() -> tuple:
    # Dynamo cannot trace ContextVar.get: while tracing, the stack is read once and the backend it names is
    # baked into the graph (as a backend= argument would be).
    return _stack.get()


def _current_stack() -> tuple:
    return _traced_stack() if torch.compiler.is_compiling() else _stack.get()


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def why_unavailable(name: str, device: torch.device | None = None, dtype: torch.dtype | None = None) -> str | None:
    """None when `name` can serve (device, dtype), else the reason in words."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}"
    if dtype is not None and dtype not in _DTYPES[name]:
        names = ", ".join(str(d).replace("torch.", "") for d in _DTYPES[name])
        return f"backend {name!r} does not take {str(dtype).replace('torch.', '')} (it takes {names})"
    dev = device.type if device is not None else None
    if name == "cpu":
        if not _native.loaded():
            return "backend 'cpu' needs the compiled core tforge._C, which is not built"
        if dev not in (None, "cpu"):
            return f"backend 'cpu' runs on CPU tensors, got a tensor on {device}"
    elif name == "cuda":
        if _native.emulating():
            return None if dev in (None, "cpu") else f"backend 'cuda' is emulated: it runs on CPU tensors, got {device}"
        if not _native.cuda_compiled():
            return "backend 'cuda' was not compiled into tforge._C (no nvcc at build time, or TFORGE_CUDA=OFF)"
        if _cuda_device_count() == 0:
            return "backend 'cuda' needs a CUDA GPU, and torch sees none"
        if dev not in (None, "cuda"):
            return f"backend 'cuda' runs on CUDA tensors, got a tensor on {device}"
    elif name == "triton":
        if not _triton_importable():
            return "backend 'triton' needs the triton package (pip install triton)"
        if dev == "cpu" and not triton_interpreted():
            return "backend 'triton' runs on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1)"
        if dev not in (None, "cpu", "cuda"):
            return f"backend 'triton' cannot run on {device}"
    return None


def resolve(device: torch.device, dtype: torch.dtype, requested: str | None = None,
            supports: Callable[[str], str | None] | None = None, impls: Mapping[str, Callable] | None = None) -> str:
    """The backend to run for a tensor on `device` with `dtype`: `requested`, else the innermost use_backend()
    block's, else the first of the device's preference order that can serve. `impls` is the op's backend
    table ({"torch": fn, "cpu": fn, ...}): only its keys are candidates. `supports(name)` adds the op's
    own limits (None when `name` can serve, else the reason)."""

    def reason_for(name):
        if impls is not None and name in BACKENDS and name not in impls:
            return f"this op has no {name!r} implementation (it has {', '.join(impls)})"
        return why_unavailable(name, device, dtype) or (supports(name) if supports else None)

    stack = _current_stack()
    name = requested if requested is not None else (stack[-1] if stack else None)
    if name is not None:
        reason = reason_for(name)
        if reason is not None:
            raise ValueError(f"backend: {reason}")
        return name
    for cand in _PREFERENCE.get(device.type, ("torch",)):
        if reason_for(cand) is None:
            return cand
    return "torch"


@contextlib.contextmanager
def use_backend(name: str | None):
    """Run tforge ops inside the block on backend `name` (None: automatic). The setting is local to the
    thread (and asyncio task) that enters the block. A function compiled with torch.compile keeps the
    backend that was in force when it was traced."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"use_backend: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    token = _stack.set(_stack.get() + (name,))
    try:
        yield
    finally:
        _stack.reset(token)


def backends() -> dict:
    """What this build and machine offer: each backend with `available` and, when it is not, the reason,
    and `devices`, the device types it serves when chosen automatically; plus the CPU kernel ISA and CUDA
    details. Its keys are every backend name an op's table may hold."""
    out = {}
    gpu = torch.device("cuda") if _cuda_device_count() > 0 else torch.device("cpu")
    for name in BACKENDS:
        dev = {"cpu": torch.device("cpu"), "cuda": torch.device("cuda"), "triton": gpu}.get(name)
        reason = why_unavailable(name, dev)
        out[name] = {"available": reason is None, **({"reason": reason} if reason else {}),
                     "devices": [d for d, order in _PREFERENCE.items() if name in order]}
    out["cpu"]["isa"] = _native.cpu_isa()
    if _native.loaded():
        out["cpu"]["int8_isa"] = _native.require().int8_cpu_isa()
    out["cuda"]["compiled"] = _native.cuda_compiled()
    if _native.cuda_compiled():
        out["cuda"]["archs"] = _native.require().cuda_archs
    out["triton"]["interpreter"] = triton_interpreted()
    return out
