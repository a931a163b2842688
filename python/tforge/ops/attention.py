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
- a query row with no visible key gives zeros (and zero gradients), never NaN.
"""
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from tforge import _backend, _native
from tforge.ops import _dispatch

# Kernels' head_dim limits per backend; CUDA serves what tforge._C reports.
MAX_HEAD_DIM = {"cpu": 256, "triton": 256, "torch": None}


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
        left, right = window
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
    qf = q.to(acc).transpose(1, 2)
    kf = k.to(acc).transpose(1, 2).repeat_interleave(hq // hk, dim=1)
    vf = v.to(acc).transpose(1, 2).repeat_interleave(hq // hk, dim=1)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    if attn_bias is not None:
        s = s + attn_bias.to(acc)
    s = s.masked_fill(~_visible(sq, sk, causal, window, q.device), float("-inf"))
    m = s.amax(-1, keepdim=True)
    has_key = torch.isfinite(m)
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


# ---------------------------------------------------------------- checks

def _head_dim_reason(name: str, head_dim: int, dtype: torch.dtype) -> Optional[str]:
    if name in ("cpu", "cuda") and not hasattr(_native.require(), f"attention_fwd_{name}"):
        return f"backend {name!r} has no attention kernels in this build of tforge._C"
    if name == "cuda":
        C = _native.require()
        if not C.attention_cuda_supported(head_dim, _native.DTYPE_CODES.get(dtype, -1)):
            return (f"backend 'cuda' attention serves head_dim {C.attention_cuda_head_dims()} in bf16/fp16, "
                    f"got head_dim {head_dim} in {str(dtype).replace('torch.', '')}")
        return None
    limit = MAX_HEAD_DIM.get(name)
    if limit is not None and head_dim > limit:
        return f"backend {name!r} attention serves head_dim up to {limit}, got {head_dim}"
    return None


def _check(op: str, q: Tensor, k: Tensor, v: Tensor, varlen: bool, attn_bias: Optional[Tensor],
           window: Optional[Tuple[int, int]], softmax_scale: Optional[float]) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        want = 3 if varlen else 4
        if t.dim() != want:
            layout = "(total_tokens, heads, head_dim)" if varlen else "(batch, seqlen, heads, head_dim)"
            raise ValueError(f"{op}: {name} must be {want}-D {layout}, got shape {tuple(t.shape)}")
    if not q.is_floating_point():
        raise ValueError(f"{op}: q must be floating point, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{op}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"{op}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"{op}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if not varlen and k.shape[0] != q.shape[0]:
        raise ValueError(f"{op}: q and k must have the same batch size, got {q.shape[0]} and {k.shape[0]}")
    hq, hk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"{op}: q and k must have the same head_dim, got {d} and {k.shape[-1]}")
    if d < 1 or hq < 1 or hk < 1 or hq % hk != 0:
        raise ValueError(f"{op}: heads of q ({hq}) must be a positive multiple of heads of k/v ({hk})")
    if window is not None:
        if (not isinstance(window, (tuple, list)) or len(window) != 2
                or not all(isinstance(w, int) and w >= -1 for w in window)):
            raise ValueError(f"{op}: window must be (left, right) ints >= -1 (-1: unbounded), got {window!r}")
    if softmax_scale is not None and not (isinstance(softmax_scale, (int, float)) and math.isfinite(softmax_scale)):
        raise ValueError(f"{op}: softmax_scale must be a finite number or None, got {softmax_scale!r}")
    if attn_bias is not None:
        if not isinstance(attn_bias, torch.Tensor) or not attn_bias.is_floating_point():
            raise ValueError(f"{op}: attn_bias must be a floating-point tensor")
        if attn_bias.device != q.device:
            raise ValueError(f"{op}: attn_bias is on {attn_bias.device} but q is on {q.device}")
        target = (q.shape[0], hq, q.shape[1], k.shape[1])
        try:
            torch.broadcast_shapes(attn_bias.shape, target)
            ok = attn_bias.dim() <= 4 and torch.broadcast_shapes(attn_bias.shape, target) == target
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{op}: attn_bias of shape {tuple(attn_bias.shape)} does not broadcast to "
                             f"(batch, heads_q, seqlen_q, seqlen_k) = {target}")
        if attn_bias.requires_grad:
            raise ValueError(f"{op}: no gradient flows to attn_bias; pass attn_bias.detach()")


def _check_cu_seqlens(op: str, q: Tensor, k: Tensor, cu_q: Tensor, cu_k: Tensor, max_q: int, max_k: int):
    for name, cu, total, mx in (("cu_seqlens_q", cu_q, q.shape[0], max_q), ("cu_seqlens_k", cu_k, k.shape[0], max_k)):
        if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.dim() != 1 or cu.numel() < 1:
            raise ValueError(f"{op}: {name} must be a 1-D int32 tensor of batch + 1 offsets, got "
                             f"{getattr(cu, 'dtype', type(cu))} {tuple(getattr(cu, 'shape', ()))}")
        if cu.device != q.device:
            raise ValueError(f"{op}: {name} is on {cu.device} but q is on {q.device}")
        if not isinstance(mx, int) or mx < 0:
            raise ValueError(f"{op}: max_seqlen for {name} must be an int >= 0, got {mx!r}")
        # Contents are checked eagerly on CPU only: cheap there. On GPU (no sync) the CUDA kernels clamp
        # each sequence to the tensors and max_seqlen and rows outside every sequence stay zero (as in
        # Triton); under torch.compile the values are not known while tracing.
        if cu.device.type == "cpu" and not isinstance(cu, torch._subclasses.FakeTensor) \
                and not torch.compiler.is_compiling():
            vals = cu.tolist()
            lens = [b - a for a, b in zip(vals, vals[1:])]
            if vals[0] != 0 or any(n < 0 for n in lens) or vals[-1] != total:
                raise ValueError(f"{op}: {name} must start at 0, not decrease and end at the token count "
                                 f"{total}; got {vals[:8]}{'...' if len(vals) > 8 else ''}")
            if lens and max(lens) > mx:
                raise ValueError(f"{op}: a sequence of {max(lens)} tokens exceeds max_seqlen {mx} ({name})")
    if cu_q.numel() != cu_k.numel():
        raise ValueError(f"{op}: cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1), got "
                         f"{cu_q.numel()} and {cu_k.numel()}")


# ---------------------------------------------------------------- backends

def _fwd_torch(q, k, v, bias, cu_q, cu_k, scale, causal, window):
    if cu_q is None:
        return _attention_ref_lse(q, k, v, causal, scale, window, bias)
    outs, lses = [], []
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for b in range(len(cq) - 1):
        qs, ks, vs = q[cq[b]:cq[b + 1]], k[ck[b]:ck[b + 1]], v[ck[b]:ck[b + 1]]
        if ks.shape[0] == 0:
            outs.append(torch.zeros_like(qs))
            lses.append(torch.full((q.shape[1], qs.shape[0]), float("-inf"), device=q.device))
            continue
        o, lse = _attention_ref_lse(qs[None], ks[None], vs[None], causal, scale, window, None)
        outs.append(o[0])
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses, dim=1)


def _bwd_dense(dout, q, k, v, out, lse, bias, scale, causal, window):
    """Closed-form attention backward on (B, S, H, D) tensors, fp32, materialised."""
    hq, hk = q.shape[2], k.shape[2]
    g = hq // hk
    qf, dof, of = (t.float().transpose(1, 2) for t in (q, dout, out))
    kf = k.float().transpose(1, 2).repeat_interleave(g, dim=1)
    vf = v.float().transpose(1, 2).repeat_interleave(g, dim=1)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.float()
    s = s.masked_fill(~_visible(q.shape[1], k.shape[1], causal, window, q.device), float("-inf"))
    lse = lse[..., None]
    p = torch.where(torch.isfinite(lse), torch.exp(s - torch.where(torch.isfinite(lse), lse, 0)), 0.0)
    dv = torch.matmul(p.transpose(-1, -2), dof)
    dp = torch.matmul(dof, vf.transpose(-1, -2))
    ds = p * (dp - (dof * of).sum(-1, keepdim=True))
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qf) * scale

    def fold(t):  # (B, Hq, S, D) -> (B, S, Hk, D), summing each q-head group
        b_, _, s_, d_ = t.shape
        return t.view(b_, hk, g, s_, d_).sum(2).transpose(1, 2)

    return dq.transpose(1, 2).to(q.dtype), fold(dk).to(k.dtype), fold(dv).to(v.dtype)


def _bwd_torch(dout, q, k, v, out, lse, bias, cu_q, cu_k, scale, causal, window):
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


def _desc(t: Tensor, varlen: bool) -> Tuple[int, int, int, int]:
    """(pointer, batch stride, seq stride, head stride) in elements."""
    if varlen:
        return (_native.ptr(t), 0, t.stride(0), t.stride(1))
    return (_native.ptr(t), t.stride(0), t.stride(1), t.stride(2))


def _params(q, k, bias, cu_q, cu_k, max_q, max_k, scale, causal, window) -> dict:
    varlen = cu_q is not None
    if bias is not None:
        bias = bias.float().expand(q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    return dict(
        batch=(cu_q.numel() - 1) if varlen else q.shape[0],
        seqlen_q=max_q if varlen else q.shape[1], seqlen_k=max_k if varlen else k.shape[1],
        heads_q=q.shape[-2], heads_k=k.shape[-2], head_dim=q.shape[-1],
        cu_seqlens_q=_native.ptr(cu_q), cu_seqlens_k=_native.ptr(cu_k), total_q=q.shape[0] if varlen else 0,
        total_k=k.shape[0] if varlen else 0,
        softmax_scale=float(scale), causal=bool(causal), window_left=window[0], window_right=window[1],
        bias=_native.ptr(bias), bias_strides=tuple(bias.stride()) if bias is not None else (0, 0, 0, 0),
        dtype=_native.dtype_code(q),
    ), bias  # keep the fp32 bias alive until the call returns


def _lse_shape(q: Tensor, varlen: bool):
    return (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])


def _fwd_native(q, k, v, bias, cu_q, cu_k, max_q, max_k, scale, causal, window, device_kind):
    C = _native.require()
    varlen = cu_q is not None
    # Varlen on CUDA: rows no (clamped) sequence covers are never written; zeros, as Triton gives.
    alloc = torch.zeros if varlen and device_kind == "cuda" else torch.empty
    out = alloc(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(_lse_shape(q, varlen), dtype=torch.float32, device=q.device)
    if varlen and device_kind == "cuda":
        lse.fill_(float("-inf"))
    params, _bias = _params(q, k, bias, cu_q, cu_k, max_q, max_k, scale, causal, window)
    args = dict(q=_desc(q, varlen), k=_desc(k, varlen), v=_desc(v, varlen), out=_desc(out, varlen),
                lse=_native.ptr(lse), params=params)
    if device_kind == "cpu":
        C.attention_fwd_cpu(**args, threads=torch.get_num_threads())
    else:
        device, stream = _native.cuda_stream(q)
        C.attention_fwd_cuda(**args, device=device, stream=stream)
    return out, lse


def _bwd_native(dout, q, k, v, out, lse, bias, cu_q, cu_k, max_q, max_k, scale, causal, window, deterministic,
                device_kind):
    C = _native.require()
    varlen = cu_q is not None
    alloc = torch.zeros if varlen and device_kind == "cuda" else torch.empty  # as in the forward
    dq = alloc(q.shape, dtype=q.dtype, device=q.device)
    dk = alloc(k.shape, dtype=k.dtype, device=k.device)
    dv = alloc(v.shape, dtype=v.dtype, device=v.device)
    params, _bias = _params(q, k, bias, cu_q, cu_k, max_q, max_k, scale, causal, window)
    args = dict(q=_desc(q, varlen), k=_desc(k, varlen), v=_desc(v, varlen), out=_desc(out, varlen),
                dout=_desc(dout, varlen), lse=_native.ptr(lse), dq=_desc(dq, varlen), dk=_desc(dk, varlen),
                dv=_desc(dv, varlen), params=params, deterministic=bool(deterministic))
    if device_kind == "cpu":
        C.attention_bwd_cpu(**args, threads=torch.get_num_threads())
    else:
        device, stream = _native.cuda_stream(q)
        n = C.attention_bwd_cuda_workspace(**args, device=device)
        ws = torch.empty(max(n, 1), dtype=torch.float32, device=q.device)
        C.attention_bwd_cuda(**args, workspace=_native.ptr(ws), workspace_floats=n, device=device, stream=stream)
    return dq, dk, dv


def _inner(t: Tensor) -> Tensor:
    """Kernels need unit stride on head_dim; everything else is passed as strides."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _forward(q, k, v, bias, cu_q, cu_k, max_q, max_k, scale, causal, window, backend):
    q, k, v = _inner(q), _inner(k), _inner(v)
    if backend == "torch":
        return _fwd_torch(q, k, v, bias, cu_q, cu_k, scale, causal, window)
    if backend in ("cpu", "cuda"):
        return _fwd_native(q, k, v, bias, cu_q, cu_k, max_q, max_k, scale, causal, window, backend)
    if backend == "triton":
        from tforge.triton import attention as tattn
        if bias is not None:
            bias = bias.float().expand(q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        return tattn.attention_fwd(q, k, v, softmax_scale=scale, causal=causal, window_left=window[0],
                                   window_right=window[1], bias=bias, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                   max_seqlen_q=max_q, max_seqlen_k=max_k)
    raise ValueError(f"unknown backend {backend!r}")


def _backward(dout, q, k, v, out, lse, bias, cu_q, cu_k, max_q, max_k, scale, causal, window, deterministic,
              backend):
    q, k, v, out, dout = (_inner(t) for t in (q, k, v, out, dout))
    if backend == "torch":
        return _bwd_torch(dout, q, k, v, out, lse, bias, cu_q, cu_k, scale, causal, window)
    if backend in ("cpu", "cuda"):
        return _bwd_native(dout, q, k, v, out, lse, bias, cu_q, cu_k, max_q, max_k, scale, causal, window,
                           deterministic, backend)
    if backend == "triton":
        from tforge.triton import attention as tattn
        if bias is not None:
            bias = bias.float().expand(q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        return tattn.attention_bwd(dout, q, k, v, out, lse, softmax_scale=scale, causal=causal,
                                   window_left=window[0], window_right=window[1], bias=bias, cu_seqlens_q=cu_q,
                                   cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k)
    raise ValueError(f"unknown backend {backend!r}")


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
    lse = q.new_empty(_lse_shape(q, cu_seqlens_q is not None), dtype=torch.float32)
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
    return _backend.resolve(q.device, q.dtype, backend, supports=lambda name: _head_dim_reason(name, d, q.dtype))


def _window(window) -> Tuple[int, int]:
    return (-1, -1) if window is None else (int(window[0]), int(window[1]))


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
    wl, wr = _window(window)
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
    wl, wr = _window(window)
    out, _ = _dispatch.call(_attention_op, q, k, v, None, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q),
                            int(max_seqlen_k), float(scale), bool(causal), wl, wr, bool(deterministic), name)
    return out


def cu_seqlens_from_lengths(lengths: List[int], device=None) -> Tensor:
    """int32 offsets [0, l0, l0+l1, ...] for attention_varlen."""
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
    if lengths:
        out[1:] = torch.tensor(lengths, dtype=torch.int32, device=device).cumsum(0)
    return out
