"""Triton flash attention (FlashAttention-2 style): forward and backward, padded or varlen.

Semantics are csrc/common/attention_args.h's: layout (batch, seqlen, heads, head_dim), grouped-query
heads (q head h reads kv head h // (heads_q // heads_k)), causal / sliding-window masks aligned to the
bottom right (offset = seqlen_k - seqlen_q per sequence), an optional additive fp32 bias with any
strides, and rows with no allowed key give out = 0, lse = -inf and zero gradients.

Forward: one program per (query block, batch, q head) keeps an online softmax over the key blocks
that intersect its causal / window band (scores prescaled by log2(e) so exp2 does the work), fp32
accumulation, and writes out and the fp32 lse. Backward: a preprocess kernel computes
delta = rowsum(dO * O); a stats kernel turns lse into the per-row (m2, ll2) that p = exp2((s - m2) - ll2)
uses (see below); a dq kernel per (query block, batch, q head) walks the key blocks; a dk/dv kernel
per (key block, batch, kv head) walks the q heads of its group and their query blocks (so dk/dv are
summed over the group without atomics: deterministic). P and dS are rounded to the input dtype
before their matmuls, as FlashAttention does.

Bias values below -1e38 (finite ones such as torch.finfo(torch.float32).min) are clamped to -1e38
before the log2(e) prescale, as the CUDA kernel does: otherwise bias * log2(e) overflows to -inf and a
row masked only by such values becomes an empty row (zeros) instead of the uniform softmax that plain
fp32 PyTorch gives. In rows masked only by huge finite biases lse has lost the precision that
exp2(s - lse * log2(e)) needs; the stats kernel recomputes their max and sum and keeps them apart for
the backward (see _attention_bwd_stats_kernel), and every backward probability is capped at 1 (as CUDA's
prob_bwd), so a rounding error never overflows exp2 to inf (then NaN in dS).

Varlen: tokens after cu_seqlens_q[-1] (or cu_seqlens_k[-1]) belong to no sequence; they are left
zero-filled (out 0, lse -inf, dq / dk / dv 0). The ops layer and the CPU / CUDA kernels reject such
cu_seqlens; these launchers trust their caller, so they give defined values instead.

Under TRITON_INTERPRET=1 (the CPU test path) the launchers pick the GPU's tile sizes, warps and stages;
the interpreter only gets two workarounds (docs/triton-interpreter.md): bf16 tl.dot operands are
converted to fp32 first (the interpreter multiplies bf16 bit patterns as integers; the products are
exact in fp32, so only the accumulation order differs from the compiled code), and bf16 rounding is
done on the bits (see _rounding._to_out). Launchers trust the caller (the ops layer validates) and only
assert layout.

The kernels live in _attention_fwd (forward), _attention_bwd_rows (the backward's per-row delta and
(m2, ll2)) and _attention_bwd (dq, dk / dv), their shared @triton.jit helpers in _attention_common;
this module holds the launchers (tile configurations, layouts, flags) and looks the kernels up in its
own namespace when it launches them.
"""

import torch
import triton

from ._attention_bwd import _attention_bwd_dkdv_kernel, _attention_bwd_dq_kernel
from ._attention_bwd_rows import _attention_bwd_preprocess_kernel, _attention_bwd_stats_kernel
from ._attention_fwd import _attention_fwd_kernel
from ._common import interpreting

_LOG2E = 1.4426950408889634
_MAX_HEAD_DIM = 256


def _block_d(d):
    return max(16, triton.next_power_of_2(d))


def _fwd_config(d, fp32=False):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the forward, also the dq kernel's; the same under the
    interpreter (the tests run these tiles).

    Chosen so that sm_90 builds (triton 3.8, head_dim and strides multiples of 16) spill nothing or a
    few bytes in every variant, bias included (unaligned head dims such as 59 load element-wise and
    spill more); fp32 takes the IEEE (FMA, not tensor core) dot, which holds its operands in
    registers, hence the small tiles there."""
    if fp32:
        if d <= 64:
            return 32, 32, 4, 1
        if d <= 128:
            return 16, 16, 4, 1
        return 16, 16, 8, 1
    if d <= 64:
        return 64, 64, 4, 2
    if d <= 128:
        return 64, 32, 4, 2
    return 32, 32, 4, 2


def _bwd_config(d, fp32=False):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the dk/dv kernel (it holds k, v, dk, dv for BLOCK_N keys)."""
    if fp32:
        if d <= 64:
            return 32, 32, 4, 1
        if d <= 128:
            return 32, 32, 8, 1
        return 16, 16, 8, 1
    if d <= 64:
        return 32, 64, 4, 2
    if d <= 128:
        return 32, 64, 8, 2
    return 16, 32, 8, 2


def _pre_block_m(block_d):
    """Rows per program of the backward preprocess (delta) kernel."""
    return max(16, min(128, 8192 // block_d))


def _layout(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    """(varlen, batch, heads_q, heads_k, head_dim, seqlen_q, seqlen_k, total_q); seqlens are the maxima
    for varlen (computed from cu_seqlens, a device sync, when not given)."""
    varlen = cu_seqlens_q is not None
    if varlen:
        assert cu_seqlens_k is not None and q.dim() == 3 and k.dim() == 3
        batch = cu_seqlens_q.numel() - 1
        total_q, hq, d = q.shape
        hk = k.shape[1]
        if max_seqlen_q is None:
            max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max().item()) if batch > 0 else 0
        if max_seqlen_k is None:
            max_seqlen_k = int((cu_seqlens_k[1:] - cu_seqlens_k[:-1]).max().item()) if batch > 0 else 0
        sq, sk = int(max_seqlen_q), int(max_seqlen_k)
    else:
        assert q.dim() == 4 and k.dim() == 4
        batch, sq, hq, d = q.shape
        sk, hk = k.shape[1], k.shape[2]
        total_q = batch * sq
    assert hq % hk == 0 and d <= _MAX_HEAD_DIM, "attention: heads_q % heads_k == 0 and head_dim <= 256"
    return varlen, batch, hq, hk, d, sq, sk, total_q


def _strides3(t, varlen):
    """(batch, seq, head) strides; the batch stride is unused (0) for varlen tensors."""
    assert t.stride(-1) == 1 or t.shape[-1] <= 1, "attention: tensors need unit stride on head_dim"
    if varlen:
        return 0, t.stride(0), t.stride(1)
    return t.stride(0), t.stride(1), t.stride(2)


def _lse_strides(lse, varlen):
    if varlen:  # (Hq, Tq)
        return 0, lse.stride(0)
    return lse.stride(0), lse.stride(1)  # (B, Hq, Sq)


def _bias_args(bias, fallback):
    if bias is None:
        return fallback, (0, 0, 0, 0)
    assert bias.dtype == torch.float32 and bias.dim() == 4, "attention: bias must be fp32 (B, Hq, Sq, Sk)"
    return bias, tuple(bias.stride())


def _flags(q, causal, window_left, window_right, bias, varlen):
    # Interpreter workarounds (docs/triton-interpreter.md): bf16 dot operands in fp32, bf16 rounding on bits.
    interp_bf16 = q.dtype == torch.bfloat16 and interpreting(q)
    return dict(
        IS_VARLEN=varlen,
        IS_CAUSAL=bool(causal),
        HAS_WL=window_left is not None and window_left >= 0,
        HAS_WR=window_right is not None and window_right >= 0,
        HAS_BIAS=bias is not None,
        DOT_F32=q.dtype == torch.float32 or interp_bf16,
        SOFT_BF16=interp_bf16,
    )


def attention_fwd(q, k, v, *, softmax_scale: float, causal: bool, window_left: int, window_right: int,
                  bias=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None):
    """Padded: q (B, Sq, Hq, D), k/v (B, Sk, Hk, D), any strides with stride(-1)==1. Varlen when cu_seqlens
    given: q (Tq, Hq, D), k/v (Tk, Hk, D). bias: fp32, expanded to (B, Hq, Sq, Sk) (0 strides allowed).
    Returns (out, lse): out like q (contiguous, q.dtype), lse fp32 (B, Hq, Sq) or (Hq, Tq)."""
    varlen, batch, hq, hk, d, sq, sk, total_q = _layout(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                       max_seqlen_k)
    dev = q.device
    if varlen:
        # Tokens outside every sequence (cu[-1] < Tq) are left as "no keys": out 0, lse -inf.
        out = torch.zeros(q.shape, dtype=q.dtype, device=dev)
        lse = torch.full((hq, total_q), float("-inf"), dtype=torch.float32, device=dev)
    else:
        out = torch.empty(q.shape, dtype=q.dtype, device=dev)
        lse = torch.empty((batch, hq, sq), dtype=torch.float32, device=dev)
    if batch == 0 or sq == 0 or hq == 0 or out.numel() == 0:
        return out, lse
    flags = _flags(q, causal, window_left, window_right, bias, varlen)
    block_m, block_n, warps, stages = _fwd_config(d, q.dtype == torch.float32)
    bias_t, bias_s = _bias_args(bias, lse)
    cu_q = cu_seqlens_q if varlen else lse
    cu_k = cu_seqlens_k if varlen else lse
    grid = (triton.cdiv(sq, block_m), batch, hq)
    _attention_fwd_kernel[grid](
        q, k, v, bias_t, out, lse, cu_q, cu_k,
        *_strides3(q, varlen), *_strides3(k, varlen), *_strides3(v, varlen), *_strides3(out, varlen),
        *bias_s, *_lse_strides(lse, varlen),
        sq, sk, d, hq // hk,
        float(softmax_scale) * _LOG2E,
        int(window_left), int(window_right),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=_block_d(d),
        num_warps=warps, num_stages=stages,
        **flags,
    )
    return out, lse


def attention_bwd(dout, q, k, v, out, lse, *, softmax_scale, causal, window_left, window_right, bias=None,
                  cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None):
    """Returns (dq, dk, dv) shaped like q, k, v (contiguous; dk/dv summed over each GQA group), in the
    input dtype. lse is the forward's; out the forward's output (delta = rowsum(dout * out))."""
    varlen, batch, hq, hk, d, sq, sk, total_q = _layout(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                       max_seqlen_k)
    dev = q.device
    alloc = torch.zeros if varlen else torch.empty  # varlen: tokens outside every sequence get 0
    dq = alloc(q.shape, dtype=q.dtype, device=dev)
    dk = alloc(k.shape, dtype=k.dtype, device=dev)
    dv = alloc(v.shape, dtype=v.dtype, device=dev)
    if batch == 0 or hq == 0 or d == 0 or (sq == 0 and sk == 0):
        return dq, dk, dv
    if sq == 0 or sk == 0:
        # No query or no key anywhere: every gradient is 0.
        return dq.zero_(), dk.zero_(), dv.zero_()
    flags = _flags(q, causal, window_left, window_right, bias, varlen)
    lse = lse.contiguous()
    delta = torch.empty_like(lse)
    lse_s = _lse_strides(lse, varlen)
    bias_t, bias_s = _bias_args(bias, lse)
    cu_q = cu_seqlens_q if varlen else lse
    cu_k = cu_seqlens_k if varlen else lse
    block_d = _block_d(d)
    group = hq // hk
    scale = float(softmax_scale)
    wl, wr = int(window_left), int(window_right)
    q_s, k_s, v_s, do_s = (_strides3(t, varlen) for t in (q, k, v, dout))

    pre_m = _pre_block_m(block_d)
    _attention_bwd_preprocess_kernel[(triton.cdiv(sq, pre_m), batch, hq)](
        out, dout, delta, cu_q,
        *_strides3(out, varlen), *do_s, *lse_s,
        sq, d,
        BLOCK_M=pre_m, BLOCK_D=block_d, IS_VARLEN=varlen, num_warps=4,
    )
    m2 = torch.empty_like(lse)
    ll2 = torch.empty_like(lse)
    block_m, block_n, warps, stages = _fwd_config(d, q.dtype == torch.float32)
    stats_flags = {k: v for k, v in flags.items() if k != "SOFT_BF16"}
    _attention_bwd_stats_kernel[(triton.cdiv(sq, block_m), batch, hq)](
        q, k, bias_t, lse, m2, ll2, cu_q, cu_k,
        *q_s, *k_s, *bias_s, *lse_s,
        sq, sk, d, group, scale * _LOG2E, wl, wr,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=warps, num_stages=stages,
        **stats_flags,
    )
    _attention_bwd_dq_kernel[(triton.cdiv(sq, block_m), batch, hq)](
        q, k, v, bias_t, dout, m2, ll2, delta, dq, cu_q, cu_k,
        *q_s, *k_s, *v_s, *do_s, *_strides3(dq, varlen),
        *bias_s, *lse_s,
        sq, sk, d, group, scale, scale * _LOG2E, wl, wr,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=warps, num_stages=stages,
        **flags,
    )
    block_m, block_n, warps, stages = _bwd_config(d, q.dtype == torch.float32)
    _attention_bwd_dkdv_kernel[(triton.cdiv(sk, block_n), batch, hk)](
        q, k, v, bias_t, dout, m2, ll2, delta, dk, dv, cu_q, cu_k,
        *q_s, *k_s, *v_s, *do_s, *_strides3(dk, varlen), *_strides3(dv, varlen),
        *bias_s, *lse_s,
        sq, sk, d, group, scale, scale * _LOG2E, wl, wr,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=warps, num_stages=stages,
        **flags,
    )
    return dq, dk, dv
