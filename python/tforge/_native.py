"""Loads the compiled core ``tforge._C`` and turns tensors into the raw
arguments it takes (pointers, row views, dtype codes, streams).

``_C`` links no libtorch: it sees only integers. Everything that touches a
torch.Tensor on the way in or out happens here, so the native side can stay a
thin, checked C++ API.
"""
from __future__ import annotations

import torch

try:  # the package can be imported without a build (reference backend only)
    from tforge import _C
    _LOAD_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - depends on the install
    _C = None
    _LOAD_ERROR = exc

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


# tforge._emu while tforge.testing.emulated_cuda() is active: the same entries as _C, whose *_cuda
# ones run the CUDA kernels under the CPU emulator (csrc/emu). Tests only; None otherwise.
_EMULATOR = None


def loaded() -> bool:
    return _C is not None


def require():
    """The native module, or a RuntimeError that says how to build it."""
    if _EMULATOR is not None:
        return _EMULATOR
    if _C is None:
        raise RuntimeError(
            f"tforge's compiled core tforge._C could not be loaded ({_LOAD_ERROR}); "
            "build it with `make install` or `pip install --no-build-isolation -e .`"
        )
    return _C


def cuda_compiled() -> bool:
    return _EMULATOR is not None or (_C is not None and bool(_C.cuda_compiled))


def emulating() -> bool:
    """True inside tforge.testing.emulated_cuda(): backend 'cuda' runs on CPU tensors, emulated."""
    return _EMULATOR is not None


def load_emulator():
    """tforge._emu, or a RuntimeError that says how to build it. TFORGE_EMU_PATH names another build
    of it to load instead (tests/emu_mutations.py builds mutated kernels there)."""
    import os
    path = os.environ.get("TFORGE_EMU_PATH")
    try:
        if path:
            import importlib.util
            import sys
            if "tforge._emu" not in sys.modules:
                spec = importlib.util.spec_from_file_location("tforge._emu", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules["tforge._emu"] = module
            return sys.modules["tforge._emu"]
        from tforge import _emu
    except ImportError as exc:
        raise RuntimeError(
            f"tforge._emu (the CUDA kernels under the CPU emulator) is not built ({exc}); "
            "`make install` builds it (TFORGE_EMULATOR=ON)"
        ) from exc
    return _emu


def set_emulator(module) -> None:
    global _EMULATOR
    _EMULATOR = module


def _pointer(t: torch.Tensor) -> int:
    """t's address; under the emulator its storage is also registered as memory the kernel may touch."""
    if _EMULATOR is not None:
        s = t.untyped_storage()
        _EMULATOR.register_buffer(s.data_ptr(), s.nbytes(), f"{tuple(t.shape)} {str(t.dtype)[6:]}")
    return t.data_ptr()


def cpu_isa() -> str | None:
    return _C.cpu_isa() if _C is not None else None


class Strided:
    """A tensor whose strides are passed to the native call beside it: its pointer goes as is."""
    __slots__ = ("t",)

    def __init__(self, t: torch.Tensor):
        self.t = t


class Out:
    """An output the kernel writes densely (no strides passed): it must be contiguous."""
    __slots__ = ("t",)

    def __init__(self, t: torch.Tensor | None):
        self.t = t


class Args:
    """An op's native argument struct (csrc/common/<op>_args.h, bound by csrc/bind/args.h), filled by
    field name when the call is made: Args(C.NormFwdArgs, x=Strided(x), rows=m, ...). Tensor fields
    become addresses as in call(), nested Args become structs; an unknown field name or a value of the
    wrong type is a TypeError from the binding. Fields left out keep the struct's defaults."""
    __slots__ = ("cls", "fields")

    def __init__(self, cls, **fields):
        self.cls = cls
        self.fields = fields


_SCALARS = (int, float, bool, str)


def _arg(a, keep: list):
    cls = type(a)
    if cls in _SCALARS:  # sizes, strides, codes: most arguments, so checked first
        return a
    if cls is Args:  # one call fills the struct (csrc/bind/args.h); scalars (most fields) need no _arg call
        return a.cls(**{name: value if type(value) in _SCALARS else _arg(value, keep)
                        for name, value in a.fields.items()})
    if cls is Strided:
        return _pointer(a.t)
    if cls is Out:
        t = a.t
        if t is None:
            return 0
        if not t.is_contiguous():  # a copy would take the results: a bug in tforge, not a user error
            raise RuntimeError(f"tforge internal error: a {tuple(t.shape)} output passed to tforge._C "
                               "without its strides must be contiguous")
        return _pointer(t)
    if a is None:
        return 0
    if isinstance(a, torch.Tensor):
        # Read densely by the kernel: a view (slice, expand, transpose) is copied, or C++ would read the
        # raw memory the view does not describe (e.g. a strided cu_seqlens, or past a stride-0 one).
        if not a.is_contiguous():
            a = a.contiguous()
            keep.append(a)  # alive until the call returns
        return _pointer(a)
    return a


def call(fn, *args, **kwargs):
    """fn(*args, **kwargs), a tforge._C entry, with every tensor (also inside Args structs) turned into its
    data pointer: the one place where tensors cross into the native layer. A plain
    tensor is read densely, so it is made contiguous first; Strided(t) goes as is (its strides are among the
    arguments); Out(t) is a dense output and must already be contiguous; None is a null pointer."""
    keep: list = []  # (list comprehensions, scalars passed as they are: this runs on every op call)
    return fn(*[_arg(a, keep) for a in args],
              **{k: v if type(v) in _SCALARS else _arg(v, keep) for k, v in kwargs.items()})


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def as_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """View ``t`` as (rows, n) with unit stride along n, copying only when the
    leading dimensions cannot be collapsed into one row stride (or the last
    dimension is strided). Slices of wider tensors stay zero-copy."""
    if n == 0:  # view(-1, 0) is ambiguous: the row count comes from the leading dimensions
        rows = 1
        for s in t.shape[:-1]:
            rows *= s
        return t.new_empty((rows, 0))
    if t.stride(-1) != 1 and t.shape[-1] > 1:
        t = t.contiguous()
    try:
        t2 = t.view(-1, n)
    except RuntimeError:
        t2 = t.contiguous().view(-1, n)
    if t2.shape[0] > 1 and t2.stride(0) < n:  # e.g. expanded (stride 0) rows
        t2 = t2.contiguous()
    return t2


def row_stride(t2: torch.Tensor) -> int:
    return t2.stride(0) if t2.shape[0] > 0 else t2.shape[1]


def cuda_stream(t: torch.Tensor) -> tuple[int, int]:
    """(device index, raw stream handle) for launching on t's current stream."""
    if _EMULATOR is not None and t.device.type == "cpu":
        return 0, 0  # the emulated device: launches run to completion, no stream
    return t.device.index, torch.cuda.current_stream(t.device).cuda_stream
