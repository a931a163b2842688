"""Attention from one packed qkv tensor, FlashAttention's ``*_qkvpacked`` functions.

Layouts (q heads first, then k, then v):
- ``attention_qkvpacked``: qkv (batch, seqlen, 3, heads, head_dim), or the flat form
  (batch, seqlen, heads_q + 2 * heads_k, head_dim) with ``num_heads_k`` for grouped-query heads.
  (batch, seqlen, 3, H, D) is the same memory as the flat (batch, seqlen, 3H, D) with num_heads_k = H,
  the output of one fused qkv Linear viewed as heads.
- ``attention_varlen_qkvpacked``: packed tokens without a batch dimension, (total, 3, heads, head_dim)
  or (total, heads_q + 2 * heads_k, head_dim), with cu_seqlens / max_seqlen shared by q and k.

Semantics are tforge.attention's (see ops/attention.py; ``attention_qkvpacked_ref`` is the fp32
reference). What packing adds is the backward: one custom op returns the gradient of qkv in qkv's
layout. The cpu and cuda backends write dq, dk and dv straight into it (their kernels take strided
descriptors), so no gradient of qkv's size is concatenated; torch and triton concatenate.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from tforge.ops import _dispatch
from tforge.ops._attention_checks import check as _check, check_cu_seqlens as _check_cu_seqlens
from tforge.ops._attention_checks import clamp_window as _clamp_window
from tforge.ops.attention import _backward, _bwd_native, _forward, _inner, _lse_dtype, _lse_shape, _no_keys
from tforge.ops.attention import _resolve, attention_ref, attention_varlen_ref

__all__ = ["attention_qkvpacked", "attention_varlen_qkvpacked", "attention_qkvpacked_ref",
           "attention_varlen_qkvpacked_ref"]


# ---------------------------------------------------------------- layout

def _flat(op: str, qkv, varlen: bool, num_heads_k: Optional[int]) -> Tuple[Tensor, int]:
    """(qkv as (..., heads_q + 2 * heads_k, head_dim), heads_k), or a ValueError naming the argument."""
    if not isinstance(qkv, torch.Tensor):
        raise ValueError(f"{op}: qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if num_heads_k is not None and (isinstance(num_heads_k, bool) or not isinstance(num_heads_k, int)
                                    or num_heads_k < 1):
        raise ValueError(f"{op}: num_heads_k must be a positive int or None, got {num_heads_k!r}")
    lead = 1 if varlen else 2  # (total,) or (batch, seqlen)
    if qkv.dim() == lead + 3:  # (..., 3, heads, head_dim)
        if qkv.shape[lead] != 3:
            raise ValueError(f"{op}: a {lead + 3}-D qkv must be (..., 3, heads, head_dim), got shape "
                             f"{tuple(qkv.shape)}")
        if num_heads_k is not None and num_heads_k != qkv.shape[lead + 1]:
            raise ValueError(f"{op}: num_heads_k={num_heads_k} does not fit qkv (..., 3, {qkv.shape[lead + 1]}, "
                             f"head_dim); grouped-query heads need the flat (..., heads_q + 2 * heads_k, head_dim)")
        return qkv.flatten(lead, lead + 1), qkv.shape[lead + 1]
    if qkv.dim() != lead + 2:
        layout = "(total, 3, heads, head_dim) or (total, heads_q + 2 * heads_k, head_dim)" if varlen else \
            "(batch, seqlen, 3, heads, head_dim) or (batch, seqlen, heads_q + 2 * heads_k, head_dim)"
        raise ValueError(f"{op}: qkv must be {layout}, got shape {tuple(qkv.shape)}")
    total = qkv.shape[lead]
    if num_heads_k is None:
        if total % 3:
            raise ValueError(f"{op}: qkv has {total} heads, not 3 x heads; pass num_heads_k for grouped-query "
                             "heads (heads_q + 2 * heads_k)")
        num_heads_k = total // 3
    if total - 2 * num_heads_k < 1:
        raise ValueError(f"{op}: qkv's {total} heads leave no q head with num_heads_k={num_heads_k} "
                         "(heads_q + 2 * heads_k)")
    return qkv, num_heads_k


def _split(qkv: Tensor, heads_k: int) -> Tuple[Tensor, Tensor, Tensor]:
    heads_q = qkv.shape[-2] - 2 * heads_k
    return qkv[..., :heads_q, :], qkv[..., heads_q:heads_q + heads_k, :], qkv[..., heads_q + heads_k:, :]


# ---------------------------------------------------------------- reference

def attention_qkvpacked_ref(qkv: Tensor, causal: bool = False, softmax_scale: Optional[float] = None,
                            window: Optional[Tuple[int, int]] = None, attn_bias: Optional[Tensor] = None, *,
                            num_heads_k: Optional[int] = None) -> Tensor:
    """attention_ref on the q, k, v of a packed qkv (fp32 math, result in qkv's dtype)."""
    flat, hk = _flat("attention_qkvpacked_ref", qkv, False, num_heads_k)
    return attention_ref(*_split(flat, hk), causal, softmax_scale, window, attn_bias)


def attention_varlen_qkvpacked_ref(qkv: Tensor, cu_seqlens: Tensor, causal: bool = False,
                                   softmax_scale: Optional[float] = None, window: Optional[Tuple[int, int]] = None,
                                   *, num_heads_k: Optional[int] = None) -> Tensor:
    """attention_varlen_ref on the q, k, v of a packed (total, ...) qkv."""
    flat, hk = _flat("attention_varlen_qkvpacked_ref", qkv, True, num_heads_k)
    return attention_varlen_ref(*_split(flat, hk), cu_seqlens, cu_seqlens, causal, softmax_scale, window)


# ---------------------------------------------------------------- custom ops

@_dispatch.custom_op("tforge::attention_qkvpacked")
def _qkvpacked_op(qkv: Tensor, attn_bias: Optional[Tensor], cu_seqlens: Optional[Tensor], max_seqlen: int,
                  heads_k: int, softmax_scale: float, causal: bool, window_left: int, window_right: int,
                  deterministic: bool, backend: str) -> Tuple[Tensor, Tensor]:
    q, k, v = _split(qkv, heads_k)
    out, lse = _forward(q, k, v, attn_bias, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale, causal,
                        (window_left, window_right), backend)
    return out.contiguous(), lse.contiguous()


@_qkvpacked_op.register_fake
def _(qkv, attn_bias, cu_seqlens, max_seqlen, heads_k, softmax_scale, causal, window_left, window_right,
      deterministic, backend):
    q = _split(qkv, heads_k)[0]
    return q.new_empty(q.shape), q.new_empty(_lse_shape(q, cu_seqlens is not None), dtype=_lse_dtype(q))


def _bwd_into_one(dout, qkv, q, k, v, out, lse, bias, cu, max_seqlen, heads_k, scale, causal, window, deterministic,
                  backend):
    """The native kernels write dq, dk, dv straight into the views of one gradient of qkv's layout."""
    # As _bwd_native allocates: rows no varlen sequence covers stay zero on CUDA.
    alloc = torch.zeros if cu is not None and backend == "cuda" else torch.empty
    dqkv = alloc(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    _bwd_native(dout, q, k, v, out, lse, bias, cu, cu, max_seqlen, max_seqlen, scale, causal, window, deterministic,
                backend, into=_split(dqkv, heads_k))
    return dqkv


def _bwd_concatenated(dout, qkv, q, k, v, out, lse, bias, cu, max_seqlen, heads_k, scale, causal, window,
                      deterministic, backend):
    """tforge.attention's backward for the backend, its three gradients concatenated in qkv's layout."""
    grads = _backward(dout, q, k, v, out, lse, bias, cu, cu, max_seqlen, max_seqlen, scale, causal, window,
                      deterministic, backend)
    return torch.cat([g if g is not None else torch.zeros_like(t) for g, t in zip(grads, (q, k, v))], dim=-2)


# The forward is tforge.attention's (its FORWARD table, on views of qkv); the backward per backend:
BACKWARD = {"torch": _bwd_concatenated, "cpu": _bwd_into_one, "cuda": _bwd_into_one, "triton": _bwd_concatenated}


@_dispatch.custom_op("tforge::attention_qkvpacked_backward")
def _qkvpacked_backward_op(dout: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, attn_bias: Optional[Tensor],
                           cu_seqlens: Optional[Tensor], max_seqlen: int, heads_k: int, softmax_scale: float,
                           causal: bool, window_left: int, window_right: int, deterministic: bool,
                           backend: str) -> Tensor:
    qkv, out, dout = _inner(qkv), _inner(out), _inner(dout)
    q, k, v = _split(qkv, heads_k)
    bwd = _bwd_concatenated if _no_keys(k, cu_seqlens) else BACKWARD[backend]  # no keys: zeros on every backend
    return bwd(dout, qkv, q, k, v, out, lse, attn_bias, cu_seqlens, max_seqlen, heads_k, softmax_scale, causal,
               (window_left, window_right), deterministic, backend)


@_qkvpacked_backward_op.register_fake
def _(dout, qkv, out, lse, attn_bias, cu_seqlens, max_seqlen, heads_k, softmax_scale, causal, window_left,
      window_right, deterministic, backend):
    return qkv.new_empty(qkv.shape)


def _setup_context(ctx, inputs, output):
    qkv, bias, cu = inputs[:3]
    ctx.save_for_backward(qkv, output[0], output[1], bias, cu)
    ctx.rest = inputs[3:]  # max_seqlen, heads_k, scale, causal, wl, wr, deterministic, backend


def _qkvpacked_autograd(ctx, dout, dlse):
    qkv, out, lse, bias, cu = ctx.saved_tensors
    dqkv = _qkvpacked_backward_op(dout, qkv, out, lse, bias, cu, *ctx.rest)
    return (dqkv,) + (None,) * 10


_qkvpacked_op.register_autograd(_qkvpacked_autograd, setup_context=_setup_context)


# ---------------------------------------------------------------- public API

def attention_qkvpacked(qkv: Tensor, causal: bool = False, softmax_scale: Optional[float] = None,
                        window: Optional[Tuple[int, int]] = None, attn_bias: Optional[Tensor] = None, *,
                        num_heads_k: Optional[int] = None, deterministic: bool = False,
                        backend: Optional[str] = None) -> Tensor:
    """tforge.attention on a packed qkv.

    qkv: (batch, seqlen, 3, heads, head_dim), or (batch, seqlen, heads_q + 2 * heads_k, head_dim)
    with q heads first, then k, then v; num_heads_k gives heads_k for that flat form (default:
    a third of the heads). causal, softmax_scale, window, attn_bias, deterministic and backend as
    in tforge.attention. Returns out (batch, seqlen, heads_q, head_dim); differentiable in qkv,
    whose gradient comes back in qkv's layout.
    """
    op = "attention_qkvpacked"
    flat, hk = _flat(op, qkv, False, num_heads_k)
    q, k, v = _split(flat, hk)
    _check(op, q, k, v, False, attn_bias, window, softmax_scale)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    name = _resolve(op, q, backend)
    wl, wr = _clamp_window(window, q.shape[1], k.shape[1])
    out, _ = _dispatch.call(_qkvpacked_op, flat, attn_bias, None, q.shape[1], hk, float(scale), bool(causal), wl, wr,
                            bool(deterministic), name)
    return out


def attention_varlen_qkvpacked(qkv: Tensor, cu_seqlens: Tensor, max_seqlen: int, causal: bool = False,
                               softmax_scale: Optional[float] = None, window: Optional[Tuple[int, int]] = None, *,
                               num_heads_k: Optional[int] = None, deterministic: bool = False,
                               backend: Optional[str] = None) -> Tensor:
    """tforge.attention_varlen on a packed qkv of packed sequences.

    qkv: (total, 3, heads, head_dim), or (total, heads_q + 2 * heads_k, head_dim) with
    num_heads_k (q heads first, then k, then v); sequence b owns rows
    cu_seqlens[b]:cu_seqlens[b+1] (int32, batch + 1 offsets from 0), the longest has max_seqlen
    tokens. Returns out (total, heads_q, head_dim); the gradient of qkv comes back in its layout.
    """
    op = "attention_varlen_qkvpacked"
    flat, hk = _flat(op, qkv, True, num_heads_k)
    q, k, v = _split(flat, hk)
    _check(op, q, k, v, True, None, window, softmax_scale)
    _check_cu_seqlens(op, q, k, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    name = _resolve(op, q, backend)
    longest = min(max_seqlen, q.shape[0])  # as attention_varlen: no sequence is longer than the token count
    wl, wr = _clamp_window(window, longest, longest)
    out, _ = _dispatch.call(_qkvpacked_op, flat, None, cu_seqlens, int(longest), hk, float(scale), bool(causal), wl,
                            wr, bool(deterministic), name)
    return out
