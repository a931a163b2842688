"""Attention (flash-style: the score matrix is never materialised by the
kernels), with the FlashAttention layout (batch, seqlen, heads, head_dim).

``attention_ref`` / ``attention_varlen_ref`` are the fp32 references (plain
softmax(QK^T)V with masks). ``tforge::attention`` is one custom op for both the
padded and the packed (varlen) form, returning (out, lse); its backward op
recomputes scores blockwise from q, k, v, out and lse.

Semantics shared by every backend (see csrc/common/attention_args.h):
- grouped-query attention: heads of q a multiple of heads of k/v;
- seqlen_q may differ from seqlen_k; causal and windows align to the
  bottom-right (query i sees key j <= i + seqlen_k - seqlen_q), as FlashAttention;
- window=(left, right) keeps keys in [i + off - left, i + off + right]; -1 = unbounded;
- attn_bias: additive, broadcastable to (batch, heads_q, seqlen_q, seqlen_k); -inf masks;
  no gradient flows to it;
- a query row with no visible key gives zeros (and zero gradients), never NaN; seqlen_k = 0 is
  the same case on every backend (zeros, lse = -inf);
- windows wider than seqlen_q + seqlen_k are clamped to it (they see the same keys), and
  max_seqlen to the token count; values beyond int64 are rejected;
- float64 runs on the torch backend in float64 (lse too), so torch.autograd.gradcheck applies.
"""
import functools
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from tforge import _backend, _native
from tforge.ops import _dispatch
from tforge.ops._attention_checks import MAX_HEAD_DIM, check as _check, check_cu_seqlens as _check_cu_seqlens
from tforge.ops._attention_checks import clamp_window as _clamp_window, head_dim_reason as _head_dim_reason

__all__ = ["attention", "attention_varlen", "attention_ref", "attention_varlen_ref", "cu_seqlens_from_lengths",
           "MAX_HEAD_DIM"]


# ---------------------------------------------------------------- reference

def _visible(sq: int, sk: int, causal: bool, window: Optional[Tuple[int, int]], device) -> Tensor:
    """(sq, sk) bool: may query i attend key j (bottom-right aligned)."""
    i = torch.arange(sq, device=device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    diag = i + (sk - sq)
    ok = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if causal:
        ok &= j <= diag
    if window is not None:
        left, right = _clamp_window(window, sq, sk)  # int64 tensors: keep diag -/+ window from wrapping
        if left >= 0:
            ok &= j >= diag - left
        if right >= 0:
            ok &= j <= diag + right
    return ok


def attention_ref(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, softmax_scale: Optional[float] = None,
                  window: Optional[Tuple[int, int]] = None, attn_bias: Optional[Tensor] = None) -> Tensor:
    """Reference attention in fp32: softmax(scale * q k^T + bias, masked) v, result in q.dtype.
    q (B, Sq, Hq, D), k/v (B, Sk, Hk, D)."""
    out, _ = _attention_ref_lse(q, k, v, causal, softmax_scale, window, attn_bias)
    return out


def _attention_ref_lse(q, k, v, causal, softmax_scale, window, attn_bias):
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    if sk == 0:  # no key at all: every row is empty (zeros, lse -inf), as a fully masked row
        return torch.zeros_like(q), torch.full((b, hq, sq), float("-inf"), dtype=acc, device=q.device)
    qf = q.to(acc).transpose(1, 2)
    kf = k.to(acc).transpose(1, 2).repeat_interleave(hq // hk, dim=1)
    vf = v.to(acc).transpose(1, 2).repeat_interleave(hq // hk, dim=1)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    if attn_bias is not None:
        s = s + attn_bias.to(acc)
    s = s.masked_fill(~_visible(sq, sk, causal, window, q.device), float("-inf"))
    m = s.amax(-1, keepdim=True)
    has_key = m != float("-inf")  # a NaN / inf score is not "no key": it propagates, as in plain PyTorch
    p = torch.exp(s - torch.where(has_key, m, torch.zeros_like(m)))
    denom = p.sum(-1, keepdim=True)
    p = torch.where(has_key, p / denom.clamp_min(1e-30), torch.zeros_like(p))
    lse = torch.where(has_key, m + torch.log(denom), m).squeeze(-1)  # -inf on empty rows
    out = torch.matmul(p, vf).transpose(1, 2)
    return out.to(q.dtype), lse


def attention_varlen_ref(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                         causal: bool = False, softmax_scale: Optional[float] = None,
                         window: Optional[Tuple[int, int]] = None) -> Tensor:
    """Reference for packed sequences: q (Tq, Hq, D), k/v (Tk, Hk, D); sequence b is
    rows cu_seqlens[b]:cu_seqlens[b+1]."""
    outs = []
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(cq) - 1):
        qs, ks, vs = q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]]
        if ks.shape[0] == 0:  # no keys: every query row is empty
            outs.append(torch.zeros_like(qs))
            continue
        outs.append(attention_ref(qs[None], ks[None], vs[None], causal, softmax_scale, window)[0])
    return torch.cat(outs) if outs else q.new_empty(q.shape)


# ---------------------------------------------------------------- backends

def _lse_dtype(q: Tensor) -> torch.dtype:
    return torch.promote_types(q.dtype, torch.float32)  # fp32; fp64 on the torch backend for fp64 inputs


def _fwd_torch(q, k, v, bias, cu_q, cu_k, max_q, max_k, scale, causal, window):  # (no use for the maxima)
    if cu_q is None:
        return _attention_ref_lse(q, k, v, causal, scale, window, bias)
    outs, lses = [torch.zeros_like(q[:0])], [q.new_empty((q.shape[1], 0), dtype=_lse_dtype(q))]  # batch 0 too
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for b in range(len(cq) - 1):
        qs, ks, vs = q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]]
        if ks.shape[0] == 0:
            outs.append(torch.zeros_like(qs))
            lses.append(torch.full((q.shape[1], qs.shape[0]), float("-inf"), dtype=_lse_dtype(q), device=q.device))
            continue
        o, lse = _attention_ref_lse(qs[None], ks[None], vs[None], causal, scale, window, None)
        outs.append(o[0])
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses, dim=1)


def _bwd_dense(dout, q, k, v, out, lse, bias, scale, causal, window):
    """Closed-form attention backward on (B, S, H, D) tensors, fp32 (fp64 for fp64), materialised."""
    hq, hk = q.shape[2], k.shape[2]
    g = hq // hk
    acc = _lse_dtype(q)
    qf, dof, of = (t.to(acc).transpose(1, 2) for t in (q, dout, out))
    kf = k.to(acc).transpose(1, 2).repeat_interleave(g, dim=1)
    vf = v.to(acc).transpose(1, 2).repeat_interleave(g, dim=1)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.to(acc)
    s = s.masked_fill(~_visible(q.shape[1], k.shape[1], causal, window, q.device), float("-inf"))
    # P from the scores, not from lse: near finfo.min (a row masked with it) lse = m + log(l) loses log(l) to
    # rounding, and exp(s - lse) would give every key of the row probability 1 (fp32 PyTorch: 1 / n).
    m = s.amax(-1, keepdim=True)
    alive = m != float("-inf")  # rows that see a key (NaN propagates)
    e = torch.exp(s - torch.where(alive, m, 0))
    p = torch.where(alive, e / e.sum(-1, keepdim=True).clamp_min(1e-30), 0.0)
    dv = torch.matmul(p.transpose(-1, -2), dof)
    dp = torch.matmul(dof, vf.transpose(-1, -2))
    ds = p * (dp - (dof * of).sum(-1, keepdim=True))
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qf) * scale

    def fold(t):  # (B, Hq, S, D) -> (B, S, Hk, D), summing each q-head group
        b_, _, s_, d_ = t.shape
        return t.view(b_, hk, g, s_, d_).sum(2).transpose(1, 2)

    return dq.transpose(1, 2).to(q.dtype), fold(dk).to(k.dtype), fold(dv).to(v.dtype)


def _bwd_torch(dout, q, k, v, out, lse, bias, cu_q, cu_k, max_q, max_k, scale, causal, window, deterministic):
    if cu_q is None:
        return _bwd_dense(dout, q, k, v, out, lse, bias, scale, causal, window)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for b in range(len(cq) - 1):
        sq, sk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        if cq[b + 1] == cq[b] or ck[b + 1] == ck[b]:
            continue
        grads = _bwd_dense(dout[sq][None], q[sq][None], k[sk][None], v[sk][None], out[sq][None],
                           lse[:, sq][None], None, scale, causal, window)
        dq[sq], dk[sk], dv[sk] = (t[0] for t in grads)
    return dq, dk, dv


def _desc(t: Tensor, varlen: bool, out: bool = False) -> _native.Args:
    """t as an AttnTensor (an AttnOutTensor for outputs): its address and batch / seq / head strides in elements."""
    C = _native.require()
    batch, seq, head = (0, t.stride(0), t.stride(1)) if varlen else (t.stride(0), t.stride(1), t.stride(2))
    return _native.Args(C.AttnOutTensor if out else C.AttnTensor, ptr=_native.Strided(t), batch_stride=batch,
                        seq_stride=seq, head_stride=head)


def _params(q, k, bias, cu_q, cu_k, max_q, max_k, scale, causal, window) -> Tuple[_native.Args, Optional[Tensor]]:
    varlen = cu_q is not None
    if bias is not None:
        bias = bias.float().expand(q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    bs = bias.stride() if bias is not None else (0, 0, 0, 0)
    return _native.Args(
        _native.require().AttnParams, batch=(cu_q.numel() - 1) if varlen else q.shape[0],
        seqlen_q=max_q if varlen else q.shape[1], seqlen_k=max_k if varlen else k.shape[1],
        heads_q=q.shape[-2], heads_k=k.shape[-2], head_dim=q.shape[-1],
        cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, total_q=q.shape[0] if varlen else 0,  # dense copies: call()
        total_k=k.shape[0] if varlen else 0,
        softmax_scale=float(scale), causal=bool(causal), window_left=window[0], window_right=window[1],
        bias=_native.Strided(bias) if bias is not None else None, bias_batch_stride=bs[0], bias_head_stride=bs[1],
        bias_q_stride=bs[2], bias_k_stride=bs[3], dtype=_native.dtype_code(q),
    ), bias  # keep the fp32 bias alive until the call returns


def _lse_shape(q: Tensor, varlen: bool):
    return (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])


def _fwd_native(q, k, v, bias, cu_q, cu_k, max_q, max_k, scale, causal, window, device_kind):
    C = _native.require()
    varlen = cu_q is not None
    # Varlen on CUDA: rows no (clamped) sequence covers are never written; zeros, as Triton gives.
    cuda_varlen = varlen and device_kind == "cuda"
    out = (torch.zeros if cuda_varlen else torch.empty)(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(_lse_shape(q, varlen), dtype=torch.float32, device=q.device)
    if cuda_varlen:
        lse.fill_(float("-inf"))
    params, _bias = _params(q, k, bias, cu_q, cu_k, max_q, max_k, scale, causal, window)
    args = _native.Args(C.AttnFwdArgs, p=params, q=_desc(q, varlen), k=_desc(k, varlen), v=_desc(v, varlen),
                        out=_desc(out, varlen, out=True), lse=_native.Out(lse))
    if device_kind == "cpu":
        _native.call(C.attention_fwd_cpu, args, threads=torch.get_num_threads())
    else:
        device, stream = _native.cuda_stream(q)
        _native.call(C.attention_fwd_cuda, args, device=device, stream=stream)
    return out, lse


def _bwd_native(dout, q, k, v, out, lse, bias, cu_q, cu_k, max_q, max_k, scale, causal, window, deterministic,
                device_kind, into: Optional[Tuple[Tensor, Tensor, Tensor]] = None):
    """into: preallocated (possibly strided) dq, dk, dv to write (attention_qkvpacked's views of one
    gradient); zero-filled by the caller for varlen on CUDA, as below."""
    C = _native.require()
    varlen = cu_q is not None
    if into is not None:
        dq, dk, dv = into
    else:
        alloc = torch.zeros if varlen and device_kind == "cuda" else torch.empty  # as in the forward
        dq = alloc(q.shape, dtype=q.dtype, device=q.device)
        dk = alloc(k.shape, dtype=k.dtype, device=k.device)
        dv = alloc(v.shape, dtype=v.dtype, device=v.device)
    params, _bias = _params(q, k, bias, cu_q, cu_k, max_q, max_k, scale, causal, window)
    args = _native.Args(C.AttnBwdArgs, p=params, q=_desc(q, varlen), k=_desc(k, varlen), v=_desc(v, varlen),
                        out=_desc(out, varlen), dout=_desc(dout, varlen), lse=lse, dq=_desc(dq, varlen, out=True),
                        dk=_desc(dk, varlen, out=True), dv=_desc(dv, varlen, out=True),
                        deterministic=bool(deterministic))
    if device_kind == "cpu":
        _native.call(C.attention_bwd_cpu, args, threads=torch.get_num_threads())
    else:
        device, stream = _native.cuda_stream(q)
        n = _native.call(C.attention_bwd_cuda_workspace, args, device=device)
        ws = torch.empty(max(n, 1), dtype=torch.float32, device=q.device)
        _native.call(C.attention_bwd_cuda, args, workspace=_native.Out(ws), workspace_floats=n, device=device,
                     stream=stream)
    return dq, dk, dv


def _inner(t: Tensor) -> Tensor:
    """Kernels need unit stride on head_dim; everything else is passed as strides."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _no_keys(k: Tensor, cu_q: Optional[Tensor]) -> bool:
    return k.shape[0 if cu_q is not None else 1] == 0


def _fwd_triton(q, k, v, bias, cu_q, cu_k, max_q, max_k, scale, causal, window):
    from tforge.triton import attention as tattn
    if bias is not None:
        bias = bias.float().expand(q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    return tattn.attention_fwd(q, k, v, softmax_scale=scale, causal=causal, window_left=window[0],
                               window_right=window[1], bias=bias, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                               max_seqlen_q=max_q, max_seqlen_k=max_k)


def _bwd_triton(dout, q, k, v, out, lse, bias, cu_q, cu_k, max_q, max_k, scale, causal, window, deterministic):
    from tforge.triton import attention as tattn
    if bias is not None:
        bias = bias.float().expand(q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    return tattn.attention_bwd(dout, q, k, v, out, lse, softmax_scale=scale, causal=causal,
                               window_left=window[0], window_right=window[1], bias=bias, cu_seqlens_q=cu_q,
                               cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k)


# Each backend's forward, (q, k, v, bias, cu_q, cu_k, max_q, max_k, scale, causal, window) -> (out, lse), and
# backward, (dout, q, k, v, out, lse, the same, deterministic) -> (dq, dk, dv).
FORWARD = {"torch": _fwd_torch, "cpu": functools.partial(_fwd_native, device_kind="cpu"),
           "cuda": functools.partial(_fwd_native, device_kind="cuda"), "triton": _fwd_triton}
BACKWARD = {"torch": _bwd_torch, "cpu": functools.partial(_bwd_native, device_kind="cpu"),
            "cuda": functools.partial(_bwd_native, device_kind="cuda"), "triton": _bwd_triton}


def _forward(q, k, v, bias, cu_q, cu_k, max_q, max_k, scale, causal, window, backend):
    q, k, v = _inner(q), _inner(k), _inner(v)
    if _no_keys(k, cu_q):  # one answer on every backend: each row is empty (zeros, lse -inf)
        lse = torch.full(_lse_shape(q, cu_q is not None), float("-inf"), dtype=_lse_dtype(q), device=q.device)
        return torch.zeros(q.shape, dtype=q.dtype, device=q.device), lse
    return FORWARD[backend](q, k, v, bias, cu_q, cu_k, max_q, max_k, scale, causal, window)


def _backward(dout, q, k, v, out, lse, bias, cu_q, cu_k, max_q, max_k, scale, causal, window, deterministic,
              backend):
    q, k, v, out, dout = (_inner(t) for t in (q, k, v, out, dout))
    if _no_keys(k, cu_q):
        return torch.zeros(q.shape, dtype=q.dtype, device=q.device), torch.zeros_like(k), torch.zeros_like(v)
    return BACKWARD[backend](dout, q, k, v, out, lse, bias, cu_q, cu_k, max_q, max_k, scale, causal, window,
                             deterministic)


# ---------------------------------------------------------------- custom ops

@_dispatch.custom_op("tforge::attention")
def _attention_op(q: Tensor, k: Tensor, v: Tensor, attn_bias: Optional[Tensor], cu_seqlens_q: Optional[Tensor],
                  cu_seqlens_k: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float,
                  causal: bool, window_left: int, window_right: int, deterministic: bool,
                  backend: str) -> Tuple[Tensor, Tensor]:
    out, lse = _forward(q, k, v, attn_bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                        causal, (window_left, window_right), backend)
    return out.contiguous(), lse.contiguous()


@_attention_op.register_fake
def _(q, k, v, attn_bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
      window_left, window_right, deterministic, backend):
    lse = q.new_empty(_lse_shape(q, cu_seqlens_q is not None), dtype=_lse_dtype(q))
    return q.new_empty(q.shape), lse


@_dispatch.custom_op("tforge::attention_backward")
def _attention_backward_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                           attn_bias: Optional[Tensor], cu_seqlens_q: Optional[Tensor],
                           cu_seqlens_k: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int,
                           softmax_scale: float, causal: bool, window_left: int, window_right: int,
                           deterministic: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = _backward(dout, q, k, v, out, lse, attn_bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                           max_seqlen_k, softmax_scale, causal, (window_left, window_right), deterministic, backend)
    return tuple(g.contiguous() if g is not None else torch.zeros_like(t) for g, t in zip((dq, dk, dv), (q, k, v)))


@_attention_backward_op.register_fake
def _(dout, q, k, v, out, lse, attn_bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
      causal, window_left, window_right, deterministic, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, bias, cu_q, cu_k = inputs[:6]
    ctx.save_for_backward(q, k, v, output[0], output[1], bias, cu_q, cu_k)
    ctx.rest = inputs[6:]  # max_q, max_k, scale, causal, wl, wr, deterministic, backend


def _attention_autograd(ctx, dout, dlse):
    q, k, v, out, lse, bias, cu_q, cu_k = ctx.saved_tensors
    dq, dk, dv = _attention_backward_op(dout, q, k, v, out, lse, bias, cu_q, cu_k, *ctx.rest)
    return dq, dk, dv, None, None, None, None, None, None, None, None, None, None, None


_attention_op.register_autograd(_attention_autograd, setup_context=_setup_context)


# ---------------------------------------------------------------- public API

def _resolve(op: str, q: Tensor, backend: Optional[str]) -> str:
    d = q.shape[-1]
    return _backend.resolve(q.device, q.dtype, backend, supports=lambda name: _head_dim_reason(name, d, q.dtype),
                            impls=FORWARD)


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, softmax_scale: Optional[float] = None,
              window: Optional[Tuple[int, int]] = None, attn_bias: Optional[Tensor] = None, *,
              deterministic: bool = False, backend: Optional[str] = None) -> Tensor:
    """Scaled dot-product attention without materialising the score matrix.

    q: (batch, seqlen_q, heads_q, head_dim); k, v: (batch, seqlen_k, heads_k, head_dim),
    heads_q a multiple of heads_k (grouped-query). causal aligns to the bottom-right when
    seqlen_q != seqlen_k. window=(left, right) for sliding-window attention (-1: unbounded).
    attn_bias: additive, broadcastable to (batch, heads_q, seqlen_q, seqlen_k) (padding
    masks as -inf, ALiBi); it receives no gradient. softmax_scale defaults to 1/sqrt(head_dim).
    Returns out shaped like q; differentiable in q, k and v. deterministic=True asks
    backends that could use atomics in the backward for a fixed summation order.
    """
    _check("attention", q, k, v, False, attn_bias, window, softmax_scale)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    name = _resolve("attention", q, backend)
    wl, wr = _clamp_window(window, q.shape[1], k.shape[1])
    out, _ = _dispatch.call(_attention_op, q, k, v, attn_bias, None, None, q.shape[1], k.shape[1], float(scale),
                            bool(causal), wl, wr, bool(deterministic), name)
    return out


def attention_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                     max_seqlen_q: int, max_seqlen_k: int, causal: bool = False,
                     softmax_scale: Optional[float] = None, window: Optional[Tuple[int, int]] = None, *,
                     deterministic: bool = False, backend: Optional[str] = None) -> Tensor:
    """Attention over packed sequences of different lengths (no padding).

    q: (total_q, heads_q, head_dim), k/v: (total_k, heads_k, head_dim); sequence b owns
    rows cu_seqlens[b]:cu_seqlens[b+1] (int32, batch + 1 entries starting at 0).
    max_seqlen_*: the longest sequence. Same masking and gradients as tforge.attention.
    """
    _check("attention_varlen", q, k, v, True, None, window, softmax_scale)
    _check_cu_seqlens("attention_varlen", q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    name = _resolve("attention_varlen", q, backend)
    # No sequence is longer than its token count: larger maxima only grow kernel grids and index arithmetic.
    max_q, max_k = min(max_seqlen_q, q.shape[0]), min(max_seqlen_k, k.shape[0])
    wl, wr = _clamp_window(window, max_q, max_k)
    out, _ = _dispatch.call(_attention_op, q, k, v, None, cu_seqlens_q, cu_seqlens_k, int(max_q),
                            int(max_k), float(scale), bool(causal), wl, wr, bool(deterministic), name)
    return out


def cu_seqlens_from_lengths(lengths: List[int], device=None) -> Tensor:
    """int32 offsets [0, l0, l0+l1, ...] for attention_varlen."""
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
    if lengths:
        out[1:] = torch.tensor(lengths, dtype=torch.int32, device=device).cumsum(0)
    return out
