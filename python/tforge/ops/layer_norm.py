"""LayerNorm over the last dimension, plain and fused with a residual add.

``layer_norm_ref`` / ``add_layer_norm_ref`` are the pure-PyTorch references
(fp32 upcast) that tests and benchmarks compare against. ``tforge::layer_norm``
and ``tforge::add_layer_norm`` are torch.library custom ops (fake impls and
autograd registered) so they trace under torch.compile(fullgraph=True); the
public functions below pick the backend and return just the tensors users want.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from tforge import _backend
from tforge.ops import _dispatch, _norm


def layer_norm_ref(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                   eps: float = 1e-5) -> Tensor:
    """Reference LayerNorm: fp32 math, result in x.dtype."""
    acc = torch.promote_types(x.dtype, torch.float32)  # fp32 math; fp64 inputs stay fp64
    xf = x.to(acc)
    mean = xf.mean(-1, keepdim=True)
    var = (xf - mean).square().mean(-1, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)


def add_layer_norm_ref(x: Tensor, residual: Tensor, weight: Optional[Tensor] = None,
                       bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tuple[Tensor, Tensor]:
    """Reference fused add + LayerNorm: (layer_norm(x + residual), x + residual),
    the sum rounded to x.dtype before it is normalised."""
    acc = torch.promote_types(x.dtype, torch.float32)
    s = (x.to(acc) + residual.to(acc)).to(x.dtype)
    return layer_norm_ref(s, weight, bias, eps), s


@_dispatch.custom_op("tforge::layer_norm")
def _layer_norm_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                   backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    _norm.check_args("layer_norm", x, None, weight, bias, eps)
    _norm.check_backend("layer_norm", x, backend)
    y, _, mean, rstd = _norm.norm_forward(x, None, weight, bias, eps, False, backend)
    return y, mean.view(x.shape[:-1]), rstd.view(x.shape[:-1])


@_layer_norm_op.register_fake
def _(x, weight, bias, eps, backend):
    _norm.check_args("layer_norm", x, None, weight, bias, eps)
    return (x.new_empty(x.shape), *_norm.stats_like(x, rms=False))


@_dispatch.custom_op("tforge::add_layer_norm")
def _add_layer_norm_op(x: Tensor, residual: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                       backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _norm.check_args("add_layer_norm", x, residual, weight, bias, eps)
    _norm.check_backend("add_layer_norm", x, backend)
    y, res_out, mean, rstd = _norm.norm_forward(x, residual, weight, bias, eps, False, backend)
    return y, res_out, mean.view(x.shape[:-1]), rstd.view(x.shape[:-1])


@_add_layer_norm_op.register_fake
def _(x, residual, weight, bias, eps, backend):
    _norm.check_args("add_layer_norm", x, residual, weight, bias, eps)
    return (x.new_empty(x.shape), x.new_empty(x.shape), *_norm.stats_like(x, rms=False))


_layer_norm_backward_op = _norm.define_backward_op("layer_norm", rms=False)
_norm.register_norm_autograd(_layer_norm_op, _layer_norm_backward_op, fused=False, rms=False)
_norm.register_norm_autograd(_add_layer_norm_op, _layer_norm_backward_op, fused=True, rms=False)


def layer_norm(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5, *,
               backend: Optional[str] = None) -> Tensor:
    """LayerNorm over the last dimension of ``x``: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    x: (..., hidden) float32 / bfloat16 / float16, any strides (rows that cannot be
    viewed with one row stride are copied). weight, bias: (hidden,) or None; cast to
    x.dtype if they differ (fp32 parameters with bf16 activations). backend: "cpu",
    "cuda", "triton", "torch" or None (fastest available; see tforge.backends()).
    Differentiable in x, weight and bias.
    """
    weight, bias = _norm.prepare_params(x, weight, bias)
    _norm.check_args("layer_norm", x, None, weight, bias, eps)
    name = _backend.resolve(x.device, x.dtype, backend, impls=_norm.FORWARD)
    return _dispatch.call(_layer_norm_op, x, weight, bias, float(eps), name)[0]


def add_layer_norm(x: Tensor, residual: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                   eps: float = 1e-5, *, backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Fused residual add + LayerNorm: returns ``(layer_norm(x + residual), x + residual)``.

    The pre-norm Transformer pattern ``h = h + f(h); y = norm(h)`` in one pass over
    memory. The sum is rounded to x.dtype and that rounded sum is normalised.
    Gradients flow to x, residual, weight and bias.
    """
    _norm.check_residual("add_layer_norm", residual)  # (x, None) would silently drop the add
    weight, bias = _norm.prepare_params(x, weight, bias)
    _norm.check_args("add_layer_norm", x, residual, weight, bias, eps)
    name = _backend.resolve(x.device, x.dtype, backend, impls=_norm.FORWARD)
    y, res_out, _, _ = _dispatch.call(_add_layer_norm_op, x, residual, weight, bias, float(eps), name)
    return y, res_out
