"""Int8 (W8A8) matrix multiplication: symmetric per-token / per-channel
quantisation, the exact int8 GEMM with int32 output, and the fused linear
whose epilogue dequantises (row scale x column scale), adds the bias and casts.

References: ``quantize_per_token_ref``, ``int8_matmul_ref`` (exact, via fp64,
which represents every int32 partial sum of K <= 2^16 exactly) and
``int8_linear_ref``. Inference only: these ops carry no autograd.
Weights use nn.Linear's layout (out_features, in_features) = (N, K).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from tforge import _backend, _native
from tforge.ops import _dispatch

MAX_K = 1 << 16  # int32 accumulation is exact for K up to this (|a*b| <= 2^14)


# ---------------------------------------------------------------- references

def quantize_per_token_ref(x: Tensor, col_scale: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Symmetric per-row int8: scale = max|x_row| / 127, q = clamp(round(x / scale), -127, 127);
    rows of zeros get scale 0 and q 0. Returns (q int8, scale fp32 of shape x.shape[:-1]).
    col_scale (last-dim sized, fp32): quantise x * col_scale instead."""
    xf = x.float()
    if col_scale is not None:
        xf = xf * col_scale.float()
    scale = xf.abs().amax(-1) / 127.0
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(xf / safe[..., None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_per_channel_ref(w: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-output-channel (per row of an (N, K) weight) symmetric int8."""
    return quantize_per_token_ref(w)


def int8_matmul_ref(a: Tensor, b: Tensor) -> Tensor:
    """Exact a @ b.T in int32 for a (M, K), b (N, K) int8."""
    return torch.matmul(a.double(), b.double().T).to(torch.int32)


def int8_linear_ref(x_q: Tensor, x_scale: Optional[Tensor], w_q: Tensor, w_scale: Tensor,
                    bias: Optional[Tensor] = None, out_dtype: torch.dtype = torch.float32) -> Tensor:
    """cast(acc * x_scale[m] * w_scale[n] + bias[n]) with acc the exact int32 product."""
    acc = int8_matmul_ref(x_q.reshape(-1, x_q.shape[-1]), w_q).float()
    if x_scale is not None:
        acc = acc * x_scale.reshape(-1, 1).float()
    acc = acc * w_scale.float()[None, :]
    if bias is not None:
        acc = acc + bias.float()
    return acc.to(out_dtype).reshape(*x_q.shape[:-1], w_q.shape[0])


# ---------------------------------------------------------------- checks

def _op_reason(name: str, device: torch.device) -> Optional[str]:
    entry = {"cpu": "int8_gemm_cpu", "cuda": "int8_gemm_cuda"}.get(name)
    if entry is not None and not hasattr(_native.require(), entry):
        return f"backend {name!r} has no int8 kernels in this build of tforge._C"
    return None


def _resolve(t: Tensor, backend: Optional[str], impls: dict, dtype: Optional[torch.dtype] = None) -> str:
    # int8 inputs: availability is checked against the float dtype the op works with
    return _backend.resolve(t.device, dtype or torch.float32, backend, supports=lambda n: _op_reason(n, t.device),
                            impls=impls)


def _check_int8(op: str, name: str, t: Tensor, dims: int = 2) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int8:
        raise ValueError(f"{op}: {name} must be an int8 tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if t.dim() != dims:
        raise ValueError(f"{op}: {name} must be {dims}-D, got shape {tuple(t.shape)}")


def _check_gemm(op: str, a: Tensor, b: Tensor) -> None:
    _check_int8(op, "a", a)
    _check_int8(op, "b", b)
    if a.shape[1] == 0:  # as quantize_per_token: an empty reduction is no quantised product
        raise ValueError(f"{op}: K (the last dimension) must be >= 1, got a of shape {tuple(a.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{op}: K mismatch: a is {tuple(a.shape)} (M, K) but b is {tuple(b.shape)} (N, K)")
    if a.device != b.device:
        raise ValueError(f"{op}: a is on {a.device} but b is on {b.device}")
    if a.shape[1] > MAX_K:
        raise ValueError(f"{op}: K = {a.shape[1]} exceeds {MAX_K}, beyond which int32 accumulation may overflow")


def _rows(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 and (t.shape[0] <= 1 or t.stride(0) >= t.shape[1]) else t.contiguous()


# ---------------------------------------------------------------- backends

def _gemm_args(a, b, out, c_i32, a_scale, b_scale, bias):
    m, k = a.shape
    return _native.Args(_native.require().Int8GemmArgs, a=_native.Strided(a), a_stride=a.stride(0) if m > 0 else k,
                        b=_native.Strided(b), b_stride=b.stride(0) if b.shape[0] > 0 else k, M=m, N=b.shape[0], K=k,
                        c_i32=_native.Out(c_i32), c=_native.Out(out),
                        out_dtype=_native.DTYPE_CODES[out.dtype] if out is not None else 0,
                        a_scale=a_scale, b_scale=b_scale, bias=bias)


def _gemm_cpu(a, b, out, c_i32, a_scale, b_scale, bias):
    _native.call(_native.require().int8_gemm_cpu, _gemm_args(a, b, out, c_i32, a_scale, b_scale, bias),
                 threads=torch.get_num_threads())


def _gemm_cuda(a, b, out, c_i32, a_scale, b_scale, bias):
    device, stream = _native.cuda_stream(a)
    _native.call(_native.require().int8_gemm_cuda, _gemm_args(a, b, out, c_i32, a_scale, b_scale, bias),
                 device=device, stream=stream)


def _quantize_args(x2, col_scale):
    """The outputs (q, scale), allocated, and the QuantizeRowsArgs that fill them."""
    q = torch.empty(x2.shape, dtype=torch.int8, device=x2.device)
    scale = torch.empty(x2.shape[0], dtype=torch.float32, device=x2.device)
    args = _native.Args(_native.require().QuantizeRowsArgs, x=_native.Strided(x2), x_stride=_native.row_stride(x2),
                        rows=x2.shape[0], cols=x2.shape[1], dtype=_native.dtype_code(x2), q=_native.Out(q),
                        scale=_native.Out(scale), col_scale=col_scale)
    return (q, scale), args


def _quantize_cpu(x2, col_scale):
    outs, args = _quantize_args(x2, col_scale)
    _native.call(_native.require().quantize_rows_cpu, args, threads=torch.get_num_threads())
    return outs


def _unfused(x2, col_scale):
    """x2 * col_scale, for the kernels that do not fuse the column scale (CUDA, Triton)."""
    return x2 if col_scale is None else x2.float() * col_scale


def _quantize_cuda(x2, col_scale):
    outs, args = _quantize_args(_unfused(x2, col_scale), None)
    device, stream = _native.cuda_stream(x2)
    _native.call(_native.require().quantize_rows_cuda, args, device=device, stream=stream)
    return outs


def _quantize_triton(x2, col_scale):
    from tforge.triton import int8 as tint8
    return tint8.quantize_rows(_unfused(x2, col_scale))


def _matmul_cpu(a, b):
    c = torch.empty(a.shape[0], b.shape[0], dtype=torch.int32, device=a.device)
    _gemm_cpu(a, b, None, c, None, None, None)
    return c


def _matmul_cuda(a, b):
    c = torch.empty(a.shape[0], b.shape[0], dtype=torch.int32, device=a.device)
    _gemm_cuda(a, b, None, c, None, None, None)
    return c


def _matmul_triton(a, b):
    from tforge.triton import int8 as tint8
    return tint8.int8_matmul(a, b)


def _linear_cpu(a, a_scale, w, w_scale, bias32, out_dtype):
    out = torch.empty(a.shape[0], w.shape[0], dtype=out_dtype, device=a.device)
    _gemm_cpu(a, w, out, None, a_scale, w_scale, bias32)
    return out


def _linear_cuda(a, a_scale, w, w_scale, bias32, out_dtype):
    out = torch.empty(a.shape[0], w.shape[0], dtype=out_dtype, device=a.device)
    _gemm_cuda(a, w, out, None, a_scale, w_scale, bias32)
    return out


def _linear_triton(a, a_scale, w, w_scale, bias32, out_dtype):
    from tforge.triton import int8 as tint8
    return tint8.int8_linear(a, a_scale, w, w_scale, bias32, out_dtype)


# Each op on each backend. quantize_rows: (x2 (rows, K) float, col_scale fp32 (K,) or None) -> (q, scale);
# int8_matmul: (a (M, K), b (N, K)) -> int32 (M, N); int8_linear: (a, a_scale, w, w_scale, bias fp32,
# out_dtype) -> (M, N) out_dtype.
QUANTIZE_ROWS = {"torch": quantize_per_token_ref, "cpu": _quantize_cpu, "cuda": _quantize_cuda,
                 "triton": _quantize_triton}
INT8_MATMUL = {"torch": int8_matmul_ref, "cpu": _matmul_cpu, "cuda": _matmul_cuda, "triton": _matmul_triton}
INT8_LINEAR = {"torch": int8_linear_ref, "cpu": _linear_cpu, "cuda": _linear_cuda, "triton": _linear_triton}


# ---------------------------------------------------------------- custom ops

@_dispatch.custom_op("tforge::quantize_rows")
def _quantize_rows_op(x: Tensor, col_scale: Optional[Tensor], backend: str) -> Tuple[Tensor, Tensor]:
    x2 = _native.as_rows(x, x.shape[-1])
    cs = col_scale.float().contiguous() if col_scale is not None else None
    q, scale = QUANTIZE_ROWS[backend](x2, cs)
    return q.view(x.shape), scale.view(x.shape[:-1])


@_quantize_rows_op.register_fake
def _(x, col_scale, backend):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:-1], dtype=torch.float32)


@_dispatch.custom_op("tforge::int8_matmul")
def _int8_matmul_op(a: Tensor, b: Tensor, backend: str) -> Tensor:
    return INT8_MATMUL[backend](_rows(a), _rows(b))


@_int8_matmul_op.register_fake
def _(a, b, backend):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


@_dispatch.custom_op("tforge::int8_linear")
def _int8_linear_op(x_q: Tensor, x_scale: Optional[Tensor], w_q: Tensor, w_scale: Tensor, bias: Optional[Tensor],
                    out_dtype: torch.dtype, backend: str) -> Tensor:
    a = _rows(x_q.reshape(-1, x_q.shape[-1]))
    w = _rows(w_q)
    a_scale = x_scale.reshape(-1).float().contiguous() if x_scale is not None else None
    b_scale = w_scale.float().contiguous()
    bias32 = bias.float().contiguous() if bias is not None else None
    out = INT8_LINEAR[backend](a, a_scale, w, b_scale, bias32, out_dtype)
    return out.reshape(*x_q.shape[:-1], w.shape[0])


@_int8_linear_op.register_fake
def _(x_q, x_scale, w_q, w_scale, bias, out_dtype, backend):
    return x_q.new_empty((*x_q.shape[:-1], w_q.shape[0]), dtype=out_dtype)


# ---------------------------------------------------------------- public API

_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def quantize_per_token(x: Tensor, *, col_scale: Optional[Tensor] = None,
                       backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Symmetric per-token (per-row over the last dim) int8 quantisation of a float tensor:
    returns (x_int8 shaped like x, scale fp32 shaped x.shape[:-1]); x ~= x_int8 * scale.
    col_scale (hidden,): quantise x * col_scale, fused into the pass over x (SmoothQuant)."""
    if not isinstance(x, torch.Tensor) or x.dtype not in _OUT_DTYPES:
        raise ValueError(f"quantize_per_token: x must be float32/bfloat16/float16, got {getattr(x, 'dtype', x)}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"quantize_per_token: x needs a non-empty last dimension, got shape {tuple(x.shape)}")
    if col_scale is not None and (not isinstance(col_scale, torch.Tensor) or not col_scale.is_floating_point()):
        raise ValueError(f"quantize_per_token: col_scale must be a floating-point tensor of shape ({x.shape[-1]},), "
                         f"got {getattr(col_scale, 'dtype', type(col_scale).__name__)}")
    if col_scale is not None and (tuple(col_scale.shape) != (x.shape[-1],) or col_scale.device != x.device):
        raise ValueError(f"quantize_per_token: col_scale must have shape ({x.shape[-1]},) on {x.device}, got "
                         f"{tuple(col_scale.shape)} on {col_scale.device}")
    return _dispatch.call(_quantize_rows_op, x, col_scale, _resolve(x, backend, QUANTIZE_ROWS, x.dtype))


def quantize_per_channel(w: Tensor, *, backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Per-output-channel int8 for an (N, K) weight: (w_int8 (N, K), scale fp32 (N,))."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"quantize_per_channel: w must be a 2-D (out_features, in_features) tensor, got "
                         f"{tuple(getattr(w, 'shape', ()))}")
    return quantize_per_token(w, backend=backend)


def int8_matmul(a_int8: Tensor, b_int8: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Exact int32 a @ b.T for a (M, K) and b (N, K) int8 (b in nn.Linear's weight layout)."""
    _check_gemm("int8_matmul", a_int8, b_int8)
    return _dispatch.call(_int8_matmul_op, a_int8, b_int8, _resolve(a_int8, backend, INT8_MATMUL))


def int8_linear(x_int8: Tensor, x_scale: Optional[Tensor], w_int8: Tensor, w_scale: Tensor,
                bias: Optional[Tensor] = None, out_dtype: torch.dtype = torch.float32, *,
                backend: Optional[str] = None) -> Tensor:
    """W8A8 linear: (x_int8 @ w_int8.T) * x_scale[:, None] * w_scale[None, :] + bias, cast to
    out_dtype, with the dequantisation fused into the GEMM epilogue. x_int8 (..., K),
    x_scale (...) fp32 or None (= 1), w_int8 (N, K), w_scale (N,), bias (N,) or None."""
    op = "int8_linear"
    if not isinstance(x_int8, torch.Tensor) or x_int8.dtype != torch.int8 or x_int8.dim() < 1:
        raise ValueError(f"{op}: x_int8 must be an int8 tensor (..., K), got {getattr(x_int8, 'dtype', x_int8)}")
    if x_int8.shape[-1] == 0:  # (before reshape(-1, 0), which is ambiguous)
        raise ValueError(f"{op}: K (the last dimension of x_int8) must be >= 1, got shape {tuple(x_int8.shape)}")
    _check_gemm(op, x_int8.reshape(-1, x_int8.shape[-1]), w_int8)
    n = w_int8.shape[0]
    if x_scale is not None and tuple(x_scale.shape) != tuple(x_int8.shape[:-1]):
        raise ValueError(f"{op}: x_scale must have shape {tuple(x_int8.shape[:-1])} (one per token), "
                         f"got {tuple(x_scale.shape)}")
    if not isinstance(w_scale, torch.Tensor) or tuple(w_scale.shape) != (n,):
        raise ValueError(f"{op}: w_scale must have shape ({n},) (one per output channel), "
                         f"got {tuple(getattr(w_scale, 'shape', ()))}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"{op}: bias must have shape ({n},), got {tuple(bias.shape)}")
    for name, t in (("x_scale", x_scale), ("w_scale", w_scale), ("bias", bias)):
        if t is not None and t.device != x_int8.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x_int8 is on {x_int8.device}")
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"{op}: out_dtype must be one of float32, bfloat16, float16, got {out_dtype}")
    return _dispatch.call(_int8_linear_op, x_int8, x_scale, w_int8, w_scale, bias, out_dtype,
                          _resolve(x_int8, backend, INT8_LINEAR, out_dtype))
