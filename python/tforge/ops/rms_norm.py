"""RMSNorm over the last dimension, plain and fused with a residual add.

``rms_norm_ref`` / ``add_rms_norm_ref`` are the pure-PyTorch references (fp32
upcast). ``tforge::rms_norm`` and ``tforge::add_rms_norm`` are torch.library
custom ops with fake impls and autograd; the public functions pick the backend.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from tforge import _backend
from tforge.ops import _dispatch, _norm


def rms_norm_ref(x: Tensor, weight: Optional[Tensor] = None, eps: float = 1e-6) -> Tensor:
    """Reference RMSNorm: ``x / sqrt(mean(x^2) + eps) * weight`` in fp32, result in x.dtype."""
    acc = torch.promote_types(x.dtype, torch.float32)  # fp32 math; fp64 inputs stay fp64
    xf = x.to(acc)
    y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(acc)
    return y.to(x.dtype)


def add_rms_norm_ref(x: Tensor, residual: Tensor, weight: Optional[Tensor] = None,
                     eps: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """Reference fused add + RMSNorm: (rms_norm(x + residual), x + residual),
    the sum rounded to x.dtype before it is normalised."""
    acc = torch.promote_types(x.dtype, torch.float32)
    s = (x.to(acc) + residual.to(acc)).to(x.dtype)
    return rms_norm_ref(s, weight, eps), s


@_dispatch.custom_op("tforge::rms_norm")
def _rms_norm_op(x: Tensor, weight: Optional[Tensor], eps: float, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    _norm.check_args("rms_norm", x, None, weight, None, eps)
    _norm.check_backend("rms_norm", x, backend)
    y, _, _, rstd = _norm.norm_forward(x, None, weight, None, eps, True, backend)
    return y, *_norm.stats_like(x, rms=True)[:1], rstd.view(x.shape[:-1])


@_rms_norm_op.register_fake
def _(x, weight, eps, backend):
    _norm.check_args("rms_norm", x, None, weight, None, eps)
    return (x.new_empty(x.shape), *_norm.stats_like(x, rms=True))


@_dispatch.custom_op("tforge::add_rms_norm")
def _add_rms_norm_op(x: Tensor, residual: Tensor, weight: Optional[Tensor], eps: float,
                     backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _norm.check_args("add_rms_norm", x, residual, weight, None, eps)
    _norm.check_backend("add_rms_norm", x, backend)
    y, res_out, _, rstd = _norm.norm_forward(x, residual, weight, None, eps, True, backend)
    return y, res_out, *_norm.stats_like(x, rms=True)[:1], rstd.view(x.shape[:-1])


@_add_rms_norm_op.register_fake
def _(x, residual, weight, eps, backend):
    _norm.check_args("add_rms_norm", x, residual, weight, None, eps)
    return (x.new_empty(x.shape), x.new_empty(x.shape), *_norm.stats_like(x, rms=True))


_rms_norm_backward_op = _norm.define_backward_op("rms_norm", rms=True)
_norm.register_norm_autograd(_rms_norm_op, _rms_norm_backward_op, fused=False, rms=True)
_norm.register_norm_autograd(_add_rms_norm_op, _rms_norm_backward_op, fused=True, rms=True)


def rms_norm(x: Tensor, weight: Optional[Tensor] = None, eps: float = 1e-6, *,
             backend: Optional[str] = None) -> Tensor:
    """RMSNorm over the last dimension of ``x``: ``x / sqrt(mean(x^2) + eps) * weight``.

    Same dtypes, layouts and backends as tforge.layer_norm; weight is cast to
    x.dtype if it differs. Differentiable in x and weight.
    """
    (weight,) = _norm.prepare_params(x, weight)
    _norm.check_args("rms_norm", x, None, weight, None, eps)
    name = _backend.resolve(x.device, x.dtype, backend, impls=_norm.FORWARD)
    return _dispatch.call(_rms_norm_op, x, weight, float(eps), name)[0]


def add_rms_norm(x: Tensor, residual: Tensor, weight: Optional[Tensor] = None, eps: float = 1e-6, *,
                 backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Fused residual add + RMSNorm: returns ``(rms_norm(x + residual), x + residual)``.
    Gradients flow to x, residual and weight."""
    _norm.check_residual("add_rms_norm", residual)  # (x, None) would silently drop the add
    (weight,) = _norm.prepare_params(x, weight)
    _norm.check_args("add_rms_norm", x, residual, weight, None, eps)
    name = _backend.resolve(x.device, x.dtype, backend, impls=_norm.FORWARD)
    y, res_out, _, _ = _dispatch.call(_add_rms_norm_op, x, residual, weight, float(eps), name)
    return y, res_out
