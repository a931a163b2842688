"""Tolerances and comparison helpers shared by tests and benchmarks.

Floating-point ops are compared with dtype-aware tolerances against their fp32
reference; the alternative rule (as in FlashAttention's tests) is that our error
against the fp32 reference is at most `factor` times that of the same
computation done by PyTorch at the input dtype. Integer ops compare exactly.
"""
from __future__ import annotations

import contextlib

import torch

from tforge import _native

# (atol, rtol) per dtype, forward and backward (gradients sum over rows, so a
# little looser in fp32).
FWD_TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}
BWD_TOL = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (1e-4, 1e-4),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (5e-3, 5e-3),
}


def tolerances(dtype: torch.dtype, backward: bool = False) -> tuple[float, float]:
    return (BWD_TOL if backward else FWD_TOL)[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, *,
                 backward: bool = False, name: str = "output") -> None:
    """Elementwise |actual - expected| <= atol + rtol * |expected| with the
    tolerances of `dtype` (default: actual's dtype); compared in fp32.
    Shapes must match; NaNs must sit in the same places."""
    dtype = dtype or actual.dtype
    atol, rtol = tolerances(dtype, backward)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, equal_nan=True,
                               msg=lambda m: f"{name} ({dtype}, atol={atol}, rtol={rtol}): {m}")


def max_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    return (actual.double() - reference.double()).abs().max().item() if actual.numel() else 0.0


def assert_error_within(actual: torch.Tensor, reference: torch.Tensor, baseline: torch.Tensor, *,
                        factor: float = 2.0, slack: float = 1e-5, name: str = "output") -> None:
    """FlashAttention's rule: max|actual - ref| <= factor * max|baseline - ref| + slack,
    where baseline is PyTorch's own computation at the low-precision dtype."""
    err, base = max_error(actual, reference), max_error(baseline, reference)
    if not err <= factor * base + slack:
        raise AssertionError(f"{name}: max error {err:.3g} exceeds {factor} x PyTorch's {base:.3g} + {slack}")


@contextlib.contextmanager
def emulated_cuda(sms: int = 132, cc: tuple[int, int] = (9, 0)):
    """Inside the block, backend="cuda" runs tforge's CUDA kernels on CPU tensors under the
    warp-level emulator (tforge._emu, built by `make install`): the same .cu sources and host
    code as on a GPU, with shared-memory race, cp.async and out-of-bounds checks that raise
    RuntimeError. `sms` and `cc` describe the emulated GPU (grid and split-K choices depend on
    the SM count). Yields the tforge._emu module (launch_counts(), ...). Not thread-safe, and
    blocks do not nest."""
    emu = _native.load_emulator()
    if _native.emulating():
        raise RuntimeError("emulated_cuda() blocks do not nest")
    prev = emu.device_config()
    emu.configure(sms, cc[0], cc[1])
    emu.clear_buffers()
    _native.set_emulator(emu)
    try:
        yield emu
    finally:
        _native.set_emulator(None)
        emu.clear_buffers()
        emu.configure(**prev)


def backend_names(device: str | None = None) -> list[str]:
    """The backends tests and benchmarks run, from tforge.backends() (never a list spelled out by hand, so
    a new backend is covered everywhere): all of them, or with `device` ("cpu", "cuda") those chosen
    automatically for tensors there. Unavailable ones are included: callers skip them, saying why."""
    from tforge import _backend
    return [name for name, info in _backend.backends().items() if device is None or device in info["devices"]]
