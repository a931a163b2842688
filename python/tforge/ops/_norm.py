"""Shared machinery of the LayerNorm / RMSNorm ops (plain and fused with a
residual add): argument checks, the per-backend forward and backward, and the
torch.library registration helpers used by ops/layer_norm.py and
ops/rms_norm.py.

Every backend computes the same thing (fp32 accumulation, two-pass variance):
forward returns (y, residual_out, mean, rstd) where residual_out = x + residual
rounded to x.dtype (the norm is taken of that rounded sum), mean is None for
RMSNorm; backward returns (dx, dweight, dbias) with dresidual_out folded into dx.
Inputs of any layout are viewed as (rows, hidden); a copy is made only when the
leading dimensions cannot be collapsed into one row stride.
"""
from __future__ import annotations

import torch

from tforge import _backend, _native

Tensor = torch.Tensor


def _name(t: Tensor | None) -> str:
    return "None" if t is None else f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')} on {t.device}"


_FP32_TINY = 2.0 ** -149  # the smallest positive float32: the kernels compute in fp32, so eps must survive it
_FP32_MAX = float(torch.finfo(torch.float32).max)


def check_eps(op: str, eps) -> None:
    """The one rule for eps, shared with the native layer (which re-checks it as an fp32): a real number that
    stays positive and finite in float32. A symbolic eps (torch.compile(dynamic=True)) is checked when the op
    runs."""
    if isinstance(eps, torch.SymFloat):
        return
    if isinstance(eps, bool) or not isinstance(eps, (float, int)) or not (_FP32_TINY <= eps <= _FP32_MAX):
        raise ValueError(f"{op}: eps must be a positive finite number representable in float32 "
                         f"({_FP32_TINY:.3g} to {_FP32_MAX:.3g}), got {eps!r}")


def check_residual(op: str, residual) -> None:
    if not isinstance(residual, torch.Tensor):
        raise ValueError(f"{op}: residual must be a tensor shaped like x, got {type(residual).__name__}")


def check_args(op: str, x: Tensor, residual: Tensor | None, weight: Tensor | None, bias: Tensor | None,
               eps: float) -> None:
    """Raise ValueError naming the argument and what was expected. Uses only
    metadata, so it also runs on fake tensors under torch.compile."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{op}: x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least one dimension (the normalised one), got a scalar")
    n = x.shape[-1]
    if n < 1:
        raise ValueError(f"{op}: the normalised (last) dimension of x must be >= 1, got shape {tuple(x.shape)}")
    check_eps(op, eps)
    if residual is not None:
        check_residual(op, residual)
        if residual.shape != x.shape:
            raise ValueError(f"{op}: residual must have the shape of x {tuple(x.shape)}, got {_name(residual)}")
        if residual.dtype != x.dtype or residual.device != x.device:
            raise ValueError(f"{op}: residual must match x's dtype and device ({_name(x)}), got {_name(residual)}")
    for pname, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"{op}: {pname} must be a tensor of shape ({n},) or None, got {type(p).__name__}")
        if p.shape != (n,):
            raise ValueError(f"{op}: {pname} must have shape ({n},) to match the last dimension of x, got {_name(p)}")
        if p.device != x.device:
            raise ValueError(f"{op}: {pname} is on {p.device} but x is on {x.device}; put them on one device")
        if p.dtype != x.dtype:
            raise ValueError(f"{op}: {pname} dtype {p.dtype} must equal x dtype {x.dtype} "
                             "(the public tforge.* functions cast it for you)")


def check_backend(op: str, x: Tensor, backend: str) -> None:
    reason = _backend.why_unavailable(backend, x.device, x.dtype)
    if reason is not None:
        raise ValueError(f"{op}: {reason}")


# ---------------------------------------------------------------- forward


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation, fp64 for fp64 inputs (never computed below the input's precision)."""
    return torch.promote_types(dtype, torch.float32)


def _fwd_torch(x2, r2, w, b, eps, rms):
    acc = acc_dtype(x2.dtype)
    s = x2 if r2 is None else (x2.to(acc) + r2.to(acc)).to(x2.dtype)
    sf = s.to(acc)
    if rms:
        mean = None
        rstd = torch.rsqrt(sf.square().mean(-1) + eps)
        xhat = sf * rstd[:, None]
    else:
        mean = sf.mean(-1)
        rstd = torch.rsqrt((sf - mean[:, None]).square().mean(-1) + eps)
        xhat = (sf - mean[:, None]) * rstd[:, None]
    y = xhat * w.to(acc) if w is not None else xhat
    if b is not None:
        y = y + b.to(acc)
    return y.to(x2.dtype), (s.contiguous() if r2 is not None else None), mean, rstd


def _fwd_args(x2, r2, w, b, eps, rms):
    """The outputs (y, residual_out, mean, rstd), allocated, and the NormFwdArgs that fill them."""
    m, n = x2.shape
    y = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    res_out = torch.empty_like(y) if r2 is not None else None
    mean = None if rms else torch.empty(m, dtype=torch.float32, device=x2.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x2.device)
    args = _native.Args(_native.require().NormFwdArgs, x=_native.Strided(x2), x_stride=_native.row_stride(x2),
                        residual=_native.Strided(r2) if r2 is not None else None,
                        residual_stride=_native.row_stride(r2) if r2 is not None else 0, weight=w, bias=b,
                        y=_native.Out(y), residual_out=_native.Out(res_out), mean=_native.Out(mean),
                        rstd=_native.Out(rstd), rows=m, cols=n, eps=float(eps), dtype=_native.dtype_code(x2))
    return (y, res_out, mean, rstd), args


def _fwd_cpu(x2, r2, w, b, eps, rms):
    outs, args = _fwd_args(x2, r2, w, b, eps, rms)
    C = _native.require()
    _native.call(C.rms_norm_fwd_cpu if rms else C.layer_norm_fwd_cpu, args, threads=torch.get_num_threads())
    return outs


def _fwd_cuda(x2, r2, w, b, eps, rms):
    outs, args = _fwd_args(x2, r2, w, b, eps, rms)
    C = _native.require()
    device, stream = _native.cuda_stream(x2)
    _native.call(C.rms_norm_fwd_cuda if rms else C.layer_norm_fwd_cuda, args, device=device, stream=stream)
    return outs


def _fwd_triton(x2, r2, w, b, eps, rms):
    from tforge.triton import norm as tnorm
    return tnorm.norm_fwd(x2, r2, w, b, float(eps), rms)


# The forward on each backend: (x2, r2, weight, bias, eps, rms) -> (y, residual_out, mean, rstd), all (rows, n).
FORWARD = {"torch": _fwd_torch, "cpu": _fwd_cpu, "cuda": _fwd_cuda, "triton": _fwd_triton}


def norm_forward(x: Tensor, residual: Tensor | None, weight: Tensor | None, bias: Tensor | None, eps: float,
                 rms: bool, backend: str):
    """(y, residual_out, mean, rstd), y and residual_out shaped like x."""
    n = x.shape[-1]
    x2 = _native.as_rows(x, n)
    r2 = _native.as_rows(residual, n) if residual is not None else None
    w = weight.contiguous() if weight is not None else None
    b = bias.contiguous() if bias is not None else None
    y, res_out, mean, rstd = FORWARD[backend](x2, r2, w, b, eps, rms)
    return (y.view(x.shape), res_out.view(x.shape) if res_out is not None else None, mean, rstd)


# ---------------------------------------------------------------- backward


def _bwd_torch(dy2, dr2, x2, w, mean, rstd, rms, need_dw, need_db):
    acc = acc_dtype(x2.dtype)
    xf = x2.to(acc)
    xhat = (xf if rms else xf - mean[:, None]) * rstd[:, None]
    dyf = dy2.to(acc)
    g = dyf * w.to(acc) if w is not None else dyf
    n = x2.shape[1]
    c1 = (g * xhat).sum(-1, keepdim=True) / n
    dx = g - xhat * c1
    if not rms:
        dx = dx - g.sum(-1, keepdim=True) / n
    dx = dx * rstd[:, None]
    if dr2 is not None:
        dx = dx + dr2.to(acc)
    dw = (dyf * xhat).sum(0).to(x2.dtype) if need_dw else None
    db = dyf.sum(0).to(x2.dtype) if need_db else None
    return dx.to(x2.dtype), dw, db


def _bwd_args(dy2, dr2, x2, w, mean, rstd, need_dw, need_db):
    """The gradients (dx, dweight, dbias), allocated (None when not asked), and the NormBwdArgs that fill them."""
    m, n = x2.shape
    dx = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    dw = torch.empty(n, dtype=x2.dtype, device=x2.device) if need_dw else None
    db = torch.empty(n, dtype=x2.dtype, device=x2.device) if need_db else None
    args = _native.Args(_native.require().NormBwdArgs, dy=_native.Strided(dy2), dy_stride=_native.row_stride(dy2),
                        dresidual_out=_native.Strided(dr2) if dr2 is not None else None,
                        dres_stride=_native.row_stride(dr2) if dr2 is not None else 0, x=_native.Strided(x2),
                        x_stride=_native.row_stride(x2), weight=w, mean=mean, rstd=rstd, dx=_native.Out(dx),
                        dweight=_native.Out(dw), dbias=_native.Out(db), rows=m, cols=n, dtype=_native.dtype_code(x2))
    return (dx, dw, db), args


def _bwd_cpu(dy2, dr2, x2, w, mean, rstd, rms, need_dw, need_db):
    grads, args = _bwd_args(dy2, dr2, x2, w, mean, rstd, need_dw, need_db)
    C = _native.require()
    _native.call(C.rms_norm_bwd_cpu if rms else C.layer_norm_bwd_cpu, args, threads=torch.get_num_threads())
    return grads


def _bwd_cuda(dy2, dr2, x2, w, mean, rstd, rms, need_dw, need_db):
    grads, args = _bwd_args(dy2, dr2, x2, w, mean, rstd, need_dw, need_db)
    C = _native.require()
    device, stream = _native.cuda_stream(x2)
    workspace = C.rms_norm_bwd_cuda_workspace if rms else C.layer_norm_bwd_cuda_workspace
    ws_floats = _native.call(workspace, args, device=device)  # dweight / dbias partials, allocated by torch
    ws = torch.empty(max(ws_floats, 1), dtype=torch.float32, device=x2.device)
    _native.call(C.rms_norm_bwd_cuda if rms else C.layer_norm_bwd_cuda, args, workspace=_native.Out(ws),
                 workspace_floats=ws_floats, device=device, stream=stream)
    return grads


def _bwd_triton(dy2, dr2, x2, w, mean, rstd, rms, need_dw, need_db):
    from tforge.triton import norm as tnorm
    dx, dw, db = tnorm.norm_bwd(dy2, dr2, x2, w, mean, rstd, rms, need_db)
    return dx, (dw if need_dw else None), db


# The backward on each backend: (dy2, dresidual2, x2, weight, mean, rstd, rms, need_dweight, need_dbias)
# -> (dx, dweight, dbias), dx (rows, n); gradients not asked for are None.
BACKWARD = {"torch": _bwd_torch, "cpu": _bwd_cpu, "cuda": _bwd_cuda, "triton": _bwd_triton}


def norm_backward(dy: Tensor, dresidual_out: Tensor | None, x: Tensor, weight: Tensor | None,
                  mean: Tensor | None, rstd: Tensor, rms: bool, need_dweight: bool, need_dbias: bool, backend: str):
    """(dx, dweight, dbias); dx shaped like x, dweight/dbias None when not asked.
    `weight` scales dy whether or not its gradient is asked for."""
    need_dweight = need_dweight and weight is not None
    n = x.shape[-1]
    x2 = _native.as_rows(x, n)
    dy2 = _native.as_rows(dy, n)
    dr2 = _native.as_rows(dresidual_out, n) if dresidual_out is not None else None
    w = weight.contiguous() if weight is not None else None
    dx, dw, db = BACKWARD[backend](dy2, dr2, x2, w, mean, rstd, rms, need_dweight, need_dbias)
    return dx.view(x.shape), dw, db


# ---------------------------------------------------------------- torch.library glue

_EMPTY_SHAPE = (0,)


def _or_empty(t: Tensor | None, like: Tensor) -> Tensor:
    """Custom ops cannot return None: absent outputs are empty fp32 tensors."""
    return t if t is not None else like.new_empty(_EMPTY_SHAPE, dtype=torch.float32)


def stats_like(x: Tensor, rms: bool) -> tuple[Tensor, Tensor]:
    """Fake (mean, rstd) for meta/fake tensors: one per row, fp32 (fp64 for fp64 x)."""
    rows = x.shape[:-1]
    acc = acc_dtype(x.dtype)
    mean = x.new_empty(_EMPTY_SHAPE if rms else rows, dtype=acc)
    return mean, x.new_empty(rows, dtype=acc)


def define_backward_op(family: str, rms: bool):
    """Register tforge::<family>_backward -> (dx, dweight, dbias); unrequested
    gradients come back as empty tensors."""

    def backward_impl(dy: Tensor, dresidual_out: Tensor | None, x: Tensor, weight: Tensor | None, mean: Tensor,
                      rstd: Tensor, need_dweight: bool, need_dbias: bool, backend: str):
        check_backend(f"{family} backward", x, backend)
        dx, dw, db = norm_backward(dy, dresidual_out, x, weight, None if rms else mean.reshape(-1),
                                   rstd.reshape(-1), rms, need_dweight, need_dbias, backend)
        return dx, _or_empty(dw, x), _or_empty(db, x)

    schema = ("(Tensor dy, Tensor? dresidual_out, Tensor x, Tensor? weight, Tensor mean, Tensor rstd, "
              "bool need_dweight, bool need_dbias, str backend) -> (Tensor, Tensor, Tensor)")
    op = torch.library.custom_op(f"tforge::{family}_backward", backward_impl, mutates_args=(), schema=schema)

    @op.register_fake
    def _(dy, dresidual_out, x, weight, mean, rstd, need_dweight, need_dbias, backend):
        n = x.shape[-1]
        dw = x.new_empty((n,)) if need_dweight else x.new_empty(_EMPTY_SHAPE, dtype=torch.float32)
        db = x.new_empty((n,)) if need_dbias else x.new_empty(_EMPTY_SHAPE, dtype=torch.float32)
        return x.new_empty(x.shape), dw, db

    return op


def register_norm_autograd(fwd_op, bwd_op, *, fused: bool, rms: bool) -> None:
    """Autograd for a forward op whose inputs are
    (x, [residual,] weight, [bias,] eps, backend) and outputs (y, [residual_out,] mean, rstd)."""
    w_idx = 2 if fused else 1

    def setup_context(ctx, inputs, output):
        weight = inputs[w_idx]
        ctx.has_bias = (not rms) and inputs[w_idx + 1] is not None
        ctx.backend = inputs[-1]
        normed_input = output[1] if fused else inputs[0]
        mean, rstd = output[-2], output[-1]
        ctx.save_for_backward(normed_input, weight, mean, rstd)

    def backward(ctx, dy, *rest):
        x, weight, mean, rstd = ctx.saved_tensors
        dres = rest[0] if fused else None
        need_dw = weight is not None and ctx.needs_input_grad[w_idx]
        need_db = ctx.has_bias and ctx.needs_input_grad[w_idx + 1]
        dx, dw, db = bwd_op(dy, dres, x, weight, mean, rstd, need_dw, need_db, ctx.backend)
        grads = [dx] + ([dx] if fused else []) + [dw if need_dw else None]
        if not rms:
            grads.append(db if need_db else None)
        return (*grads, None, None)  # eps, backend

    fwd_op.register_autograd(backward, setup_context=setup_context)


def prepare_params(x: Tensor, *params: Tensor | None):
    """Cast weight/bias to x's dtype (differentiably), e.g. fp32 parameters with
    bf16 activations under autocast; the kernels take one dtype."""
    cast = isinstance(x, torch.Tensor) and x.is_floating_point()  # anything else: check_args says what is wrong
    return tuple(p.to(x.dtype) if cast and isinstance(p, torch.Tensor) and p.dtype != x.dtype else p
                 for p in params)
