"""Shared cases for the LayerNorm and RMSNorm tests: every backend present on
this machine against the fp32 reference, forward and all gradients."""
from __future__ import annotations

import dataclasses
from typing import Callable

import pytest
import torch

import tforge
from tforge import _backend
from tforge.ops.layer_norm import add_layer_norm_ref, layer_norm_ref
from tforge.ops.rms_norm import add_rms_norm_ref, rms_norm_ref
from tforge.testing import assert_close, backend_names

HAS_CUDA = torch.cuda.is_available()

# (shape, layout): "contig", "sliced" (rows of a wider tensor: zero-copy row
# stride), "transposed" (leading dims not collapsible: copied).
SHAPES = [
    ((1, 1), "contig"),
    ((3, 7, 257), "contig"),
    ((1, 1023), "contig"),
    ((5, 4097), "contig"),
    ((2, 3, 65536), "contig"),
    ((0, 64), "contig"),
    ((6, 130), "sliced"),
    ((4, 3, 96), "transposed"),
    ((17, 768), "contig"),
]


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    rms: bool
    fn: Callable
    add_fn: Callable
    ref: Callable
    add_ref: Callable


LAYER_NORM = Family("layer_norm", False, tforge.layer_norm, tforge.add_layer_norm, layer_norm_ref, add_layer_norm_ref)
RMS_NORM = Family("rms_norm", True, tforge.rms_norm, tforge.add_rms_norm, rms_norm_ref, add_rms_norm_ref)


def device_for(backend: str) -> torch.device:
    return torch.device("cpu") if backend == "cpu" or not HAS_CUDA else torch.device("cuda")


def require_backend(backend: str, dtype: torch.dtype) -> torch.device:
    dev = device_for(backend)
    reason = _backend.why_unavailable(backend, dev, dtype)
    if reason is not None:
        pytest.skip(reason)
    return dev


def make(shape, layout, dtype, device):
    """A tensor of `shape` in the given layout (values ~N(0,1) plus an offset so
    that the mean matters)."""
    if layout == "sliced":
        base = torch.randn(*shape[:-1], shape[-1] + 13, device=device) + 0.5
        return base[..., : shape[-1]].to(dtype) if dtype == torch.float32 else base.to(dtype)[..., : shape[-1]]
    if layout == "transposed":
        base = torch.randn(shape[1], shape[0], *shape[2:], device=device) + 0.5
        return base.to(dtype).transpose(0, 1)
    return (torch.randn(*shape, device=device) + 0.5).to(dtype)


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def check_family(fam: Family, backend: str, dtype: torch.dtype, shape, layout, fused: bool, affine: bool,
                 has_bias: bool = True):
    dev = require_backend(backend, dtype)
    n = shape[-1]
    x = make(shape, layout, dtype, dev)
    res = make(shape, layout, dtype, dev) if fused else None
    w = (torch.randn(n, device=dev) * 0.5 + 1).to(dtype) if affine else None
    b = (torch.randn(n, device=dev) * 0.1).to(dtype) if (affine and has_bias and not fam.rms) else None
    eps = 1e-5
    kw = {} if fam.rms else {"bias": b}
    ref_kw = {} if fam.rms else {"bias": b}

    # Forward against the reference on the same (low-precision) inputs.
    if fused:
        y, s = fam.add_fn(x, res, w, eps=eps, backend=backend, **kw)
        y_ref, s_ref = fam.add_ref(x, res, w, eps=eps, **ref_kw)
        assert_close(s, s_ref, dtype, name="x + residual")
    else:
        y = fam.fn(x, w, eps=eps, backend=backend, **kw)
        y_ref = fam.ref(x, w, eps=eps, **ref_kw)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_close(y, y_ref, dtype, name=f"{fam.name} forward")

    # Gradients against autograd through the reference on fp32 copies.
    dy = torch.randn_like(y, dtype=torch.float32).to(dtype)
    ds = torch.randn_like(y, dtype=torch.float32).to(dtype) if fused else None
    ins = [leaf(x)] + ([leaf(res)] if fused else []) + [leaf(t) for t in (w, b) if t is not None]
    ins32 = [leaf(t.float()) for t in ins]

    def run(fn, args, **extra):
        it = iter(args)
        xx = next(it)
        rr = next(it) if fused else None
        ww = next(it) if w is not None else None
        bb = next(it) if b is not None else None
        kwb = {} if fam.rms else {"bias": bb}
        if fused:
            return fn(xx, rr, ww, eps=eps, **kwb, **extra)
        return (fn(xx, ww, eps=eps, **kwb, **extra),)

    outs = run(fam.add_fn if fused else fam.fn, ins, backend=backend)
    outs32 = run(fam.add_ref if fused else fam.ref, ins32)
    grads_out = [dy] + ([ds] if fused else [])
    torch.autograd.backward(outs, grads_out)
    torch.autograd.backward(outs32, [g.float() for g in grads_out])
    names = ["dx"] + (["dresidual"] if fused else []) + (["dweight"] if w is not None else []) + (
        ["dbias"] if b is not None else [])
    for name, a, r in zip(names, ins, ins32):
        assert a.grad is not None, name
        assert a.grad.dtype == a.dtype
        assert_close(a.grad, r.grad, dtype, backward=True, name=f"{fam.name} {name}")


BACKENDS = backend_names()


def dtypes_for(backend):
    if backend == "cpu" or (backend != "cuda" and not HAS_CUDA):
        return [torch.float32, torch.bfloat16]
    return [torch.float32, torch.bfloat16, torch.float16]


def cases():
    """(backend, dtype, shape, layout) for every backend; unavailable ones skip at run time."""
    out = []
    for backend in BACKENDS:
        # On a GPU machine every backend but "cpu" runs on CUDA tensors: `pytest -m gpu` selects them.
        marks = [pytest.mark.gpu] if backend == "cuda" or (HAS_CUDA and backend != "cpu") else []
        for dtype in [torch.float32, torch.bfloat16, torch.float16]:
            if dtype not in dtypes_for(backend):
                continue
            for shape, layout in SHAPES:
                out.append(pytest.param(backend, dtype, shape, layout, marks=marks,
                                        id=f"{backend}-{str(dtype)[6:]}-{'x'.join(map(str, shape))}-{layout}"))
    return out
