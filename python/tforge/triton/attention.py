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
done on the bits (see norm._to_out). Launchers trust the caller (the ops layer validates) and only
assert layout.
"""

import torch
import triton
import triton.language as tl

from ._common import interpreting
from .norm import _to_out

_LOG2E = 1.4426950408889634
_MAX_HEAD_DIM = 256


@triton.jit
def _dot(a, b, F32: tl.constexpr):
    """a @ b with fp32 accumulation. F32: fp32 operands and exact (IEEE) products, no TF32."""
    if F32:
        r = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        r = tl.dot(a, b)
    return r


@triton.jit
def _bias_log2(bias):
    """bias * log2(e), finite values below -1e38 clamped to -1e38 first (-inf stays -inf): a row masked
    only by finfo(float32).min keeps its uniform softmax instead of overflowing to an empty row."""
    bias = tl.where((bias < -1e38) & (bias != float("-inf")), -1e38, bias)
    return bias * 1.4426950408889634


@triton.jit
def _prob_bwd(s, m2, ll2):
    """exp2((s - m2) - ll2) with m2 + ll2 the row's lse in log2 units (ll2 = 0 except in rows whose
    max and sum the stats kernel recomputed), at most 1 as in exact arithmetic; NaN propagates."""
    d = (s - m2) - ll2
    return tl.exp2(tl.where(d > 0.0, 0.0, d))


@triton.jit
def _score_tile(q, k, bias_ptr, offs_m, offs_n, stride_bm, stride_bn, rows, cols, sq, sk, offset, window_left,
                window_right, qk_scale, IS_CAUSAL: tl.constexpr, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr,
                HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr):
    """Logits in log2 units of queries rows x keys cols (-inf where not allowed), as the forward has them;
    bias_ptr points at the tile's (0, 0) bias."""
    s = _dot(q, tl.trans(k), DOT_F32) * qk_scale
    ok = _allowed(rows[:, None], cols[None, :], sq, sk, offset, window_left, window_right, IS_CAUSAL, HAS_WL,
                  HAS_WR)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_m[:, None] * stride_bm + offs_n[None, :] * stride_bn, mask=ok, other=0.0)
        s += _bias_log2(bias)
    return tl.where(ok, s, float("-inf"))


@triton.jit
def _seq_bounds(CU_Q, CU_K, b, seqlen_q, seqlen_k, IS_VARLEN: tl.constexpr):
    """(first q token, q length, first k token, k length) of sequence b; padded: (0, Sq, 0, Sk)."""
    if IS_VARLEN:
        q_start = tl.load(CU_Q + b)
        sq = tl.load(CU_Q + b + 1) - q_start
        k_start = tl.load(CU_K + b)
        sk = tl.load(CU_K + b + 1) - k_start
    else:
        q_start = b * 0
        sq = seqlen_q + b * 0
        k_start = b * 0
        sk = seqlen_k + b * 0
    return q_start, sq, k_start, sk


@triton.jit
def _allowed(qi, kj, sq, sk, offset, window_left, window_right,
             IS_CAUSAL: tl.constexpr, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr):
    """Mask of allowed (query qi, key kj) pairs, ragged edges included; qi and kj are broadcastable
    2-D index tiles ([:, None] / [None, :] in either order, so the backward gets its transposed mask)."""
    ok = (qi < sq) & (kj < sk)
    if IS_CAUSAL:
        ok = ok & (kj <= qi + offset)
    if HAS_WL:
        ok = ok & (kj >= qi + offset - window_left)
    if HAS_WR:
        ok = ok & (kj <= qi + offset + window_right)
    return ok


@triton.jit
def _key_range(m0, sk, offset, window_left, window_right, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               IS_CAUSAL: tl.constexpr, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr):
    """[lo, hi) of key blocks that may hold an allowed key for queries m0 .. m0 + BLOCK_M - 1
    (lo a multiple of BLOCK_N; hi <= lo means none)."""
    lo = sk * 0
    hi = sk
    if HAS_WL:
        lo = tl.maximum(m0 + offset - window_left, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
    if IS_CAUSAL:
        hi = tl.minimum(hi, m0 + BLOCK_M + offset)
    if HAS_WR:
        hi = tl.minimum(hi, m0 + BLOCK_M + offset + window_right)
    return lo, hi


@triton.jit
def _query_range(n0, sq, offset, window_left, window_right, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 IS_CAUSAL: tl.constexpr, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr):
    """[lo, hi) of query blocks that may attend a key in n0 .. n0 + BLOCK_N - 1 (lo a multiple of BLOCK_M)."""
    lo = sq * 0
    hi = sq
    if IS_CAUSAL:
        lo = tl.maximum(lo, n0 - offset)
    if HAS_WR:
        lo = tl.maximum(lo, n0 - offset - window_right)
    lo = (lo // BLOCK_M) * BLOCK_M
    if HAS_WL:
        hi = tl.minimum(hi, n0 + BLOCK_N + window_left - offset)
    return lo, hi


@triton.jit
def _attention_fwd_kernel(
    Q,  # (B, Sq, Hq, D) or (Tq, Hq, D); unit stride on D
    K,  # (B, Sk, Hk, D) or (Tk, Hk, D)
    V,  # like K
    BIAS,  # fp32, (B, Hq, Sq, Sk) by strides (0 on broadcast dims); read only when HAS_BIAS
    OUT,  # like Q, q.dtype
    LSE,  # fp32, (B, Hq, Sq) or (Hq, Tq): row (b, h, token t) at b * stride_lb + h * stride_lh + t
    CU_Q,  # int32 (B + 1,) token offsets (IS_VARLEN)
    CU_K,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_vb, stride_vn, stride_vh,
    stride_ob, stride_om, stride_oh,
    stride_bb, stride_bh, stride_bm, stride_bn,
    stride_lb, stride_lh,
    seqlen_q, seqlen_k,  # padded lengths (unused when IS_VARLEN)
    head_dim,
    group,  # heads_q // heads_k
    qk_scale,  # softmax_scale * log2(e)
    window_left, window_right,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    HAS_WL: tl.constexpr,
    HAS_WR: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_F32: tl.constexpr,
    SOFT_BF16: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q_start, sq, k_start, sk = _seq_bounds(CU_Q, CU_K, b, seqlen_q, seqlen_k, IS_VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= sq:
        return
    offset = sk - sq
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    hk64 = (h // group).to(tl.int64)
    q_row0 = q_start.to(tl.int64) + m0  # first token of this block
    k_row0 = k_start.to(tl.int64)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    rows = m0 + offs_m  # query index within the sequence
    row_mask = rows < sq

    q_ptrs = Q + b64 * stride_qb + h64 * stride_qh + q_row0 * stride_qm + offs_m[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    k_base = K + b64 * stride_kb + hk64 * stride_kh + k_row0 * stride_kn
    v_base = V + b64 * stride_vb + hk64 * stride_vh + k_row0 * stride_vn
    bias_base = BIAS + b64 * stride_bb + h64 * stride_bh + m0.to(tl.int64) * stride_bm

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    lo, hi = _key_range(m0, sk, offset, window_left, window_right, BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_WL, HAS_WR)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kv_mask = (cols < sk)[:, None] & d_mask[None, :]
        n64 = tl.cast(start_n, tl.int64)
        k = tl.load(k_base + n64 * stride_kn + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = _dot(q, tl.trans(k), DOT_F32) * qk_scale
        ok = _allowed(rows[:, None], cols[None, :], sq, sk, offset, window_left, window_right, IS_CAUSAL, HAS_WL,
                      HAS_WR)
        if HAS_BIAS:
            bias = tl.load(bias_base + n64 * stride_bn + offs_m[:, None] * stride_bm + offs_n[None, :] * stride_bn,
                           mask=ok, other=0.0)
            s += _bias_log2(bias)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # Rows with nothing allowed yet keep m = -inf; subtract 0 there so exp2 gives 0, not NaN.
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + n64 * stride_vn + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + _dot(_to_out(p, Q.dtype.element_ty, SOFT_BF16), v, DOT_F32)
        m_i = m_new

    has = l_i > 0.0
    l_use = tl.where(has, l_i, 1.0)
    out = acc / l_use[:, None]  # acc is 0 where l_i is
    lse = tl.where(has, (m_i + tl.log2(l_use)) * 0.6931471805599453, float("-inf"))
    o_ptrs = (OUT + b64 * stride_ob + h64 * stride_oh + q_row0 * stride_om + offs_m[:, None] * stride_om
              + offs_d[None, :])
    tl.store(o_ptrs, _to_out(out, OUT.dtype.element_ty, SOFT_BF16), mask=row_mask[:, None] & d_mask[None, :])
    tl.store(LSE + b64 * stride_lb + h64 * stride_lh + q_row0 + offs_m, lse, mask=row_mask)


@triton.jit
def _attention_bwd_preprocess_kernel(
    OUT,  # like Q
    DOUT,  # like Q, any strides (unit on D)
    DELTA,  # fp32, laid out like LSE
    CU_Q,
    stride_ob, stride_om, stride_oh,
    stride_dob, stride_dom, stride_doh,
    stride_lb, stride_lh,
    seqlen_q,
    head_dim,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    if IS_VARLEN:
        q_start = tl.load(CU_Q + b)
        sq = tl.load(CU_Q + b + 1) - q_start
    else:
        q_start = b * 0
        sq = seqlen_q + b * 0
    m0 = pid_m * BLOCK_M
    if m0 >= sq:
        return
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    q_row0 = q_start.to(tl.int64) + m0
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_mask = (m0 + offs_m) < sq
    mask = row_mask[:, None] & (offs_d < head_dim)[None, :]
    o = tl.load(OUT + b64 * stride_ob + h64 * stride_oh + q_row0 * stride_om + offs_m[:, None] * stride_om
                + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DOUT + b64 * stride_dob + h64 * stride_doh + q_row0 * stride_dom + offs_m[:, None] * stride_dom
                 + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + b64 * stride_lb + h64 * stride_lh + q_row0 + offs_m, tl.sum(o * do, 1), mask=row_mask)


@triton.jit
def _attention_bwd_dkdv_kernel(
    Q, K, V,  # as in the forward
    BIAS,  # fp32 (B, Hq, Sq, Sk) by strides (HAS_BIAS)
    DOUT,  # like Q, any strides (unit on D)
    M2,  # fp32, the forward's LSE layout: per row m2 (log2 units), from the stats kernel
    LL2,  # fp32, LSE's layout: per row ll2; lse * log2(e) = m2 + ll2 (see _attention_bwd_stats_kernel)
    DELTA,  # fp32, LSE's layout
    DK, DV,  # like K, contiguous strides passed below, k.dtype
    CU_Q, CU_K,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_vb, stride_vn, stride_vh,
    stride_dob, stride_dom, stride_doh,
    stride_dkb, stride_dkn, stride_dkh,
    stride_dvb, stride_dvn, stride_dvh,
    stride_bb, stride_bh, stride_bm, stride_bn,
    stride_lb, stride_lh,
    seqlen_q, seqlen_k,
    head_dim,
    group,
    sm_scale,
    qk_scale,  # sm_scale * log2(e)
    window_left, window_right,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    HAS_WL: tl.constexpr,
    HAS_WR: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_F32: tl.constexpr,
    SOFT_BF16: tl.constexpr,
):
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    hk = tl.program_id(2)
    q_start, sq, k_start, sk = _seq_bounds(CU_Q, CU_K, b, seqlen_q, seqlen_k, IS_VARLEN)
    n0 = pid_n * BLOCK_N
    if n0 >= sk:
        return
    offset = sk - sq
    b64 = b.to(tl.int64)
    hk64 = hk.to(tl.int64)
    k_row0 = k_start.to(tl.int64) + n0
    q_row0 = q_start.to(tl.int64)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    cols = n0 + offs_n  # key index within the sequence
    kv_mask = (cols < sk)[:, None] & d_mask[None, :]
    k = tl.load(K + b64 * stride_kb + hk64 * stride_kh + k_row0 * stride_kn + offs_n[:, None] * stride_kn
                + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b64 * stride_vb + hk64 * stride_vh + k_row0 * stride_vn + offs_n[:, None] * stride_vn
                + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    lo, hi = _query_range(n0, sq, offset, window_left, window_right, BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_WL, HAS_WR)
    for g in range(0, group):
        h64 = hk64 * group + g
        q_base = Q + b64 * stride_qb + h64 * stride_qh + q_row0 * stride_qm
        do_base = DOUT + b64 * stride_dob + h64 * stride_doh + q_row0 * stride_dom
        l_base = M2 + b64 * stride_lb + h64 * stride_lh + q_row0
        ll_base = LL2 + b64 * stride_lb + h64 * stride_lh + q_row0
        d_base = DELTA + b64 * stride_lb + h64 * stride_lh + q_row0
        bias_base = BIAS + b64 * stride_bb + h64 * stride_bh + n0.to(tl.int64) * stride_bn
        for start_m in range(lo, hi, BLOCK_M):
            rows = start_m + offs_m
            row_mask = rows < sq
            m64 = tl.cast(start_m, tl.int64)
            qd_mask = row_mask[:, None] & d_mask[None, :]
            q = tl.load(q_base + m64 * stride_qm + offs_m[:, None] * stride_qm + offs_d[None, :], mask=qd_mask,
                        other=0.0)
            do = tl.load(do_base + m64 * stride_dom + offs_m[:, None] * stride_dom + offs_d[None, :], mask=qd_mask,
                         other=0.0)
            # p = exp2((s - m2) - ll2): the stats kernel's per-row values (rows past sq are masked anyway).
            m2 = tl.load(l_base + rows, mask=row_mask, other=0.0)
            ll2 = tl.load(ll_base + rows, mask=row_mask, other=0.0)
            delta = tl.load(d_base + rows, mask=row_mask, other=0.0)
            # Transposed tiles (keys x queries), so dk / dv accumulate without transposing them.
            s_t = _dot(k, tl.trans(q), DOT_F32) * qk_scale
            ok_t = _allowed(rows[None, :], cols[:, None], sq, sk, offset, window_left, window_right, IS_CAUSAL,
                            HAS_WL, HAS_WR)
            if HAS_BIAS:
                bias_t = tl.load(bias_base + m64 * stride_bm + offs_n[:, None] * stride_bn
                                 + offs_m[None, :] * stride_bm, mask=ok_t, other=0.0)
                s_t += _bias_log2(bias_t)
            s_t = tl.where(ok_t, s_t, float("-inf"))
            p_t = _prob_bwd(s_t, m2[None, :], ll2[None, :])
            dv += _dot(_to_out(p_t, Q.dtype.element_ty, SOFT_BF16), do, DOT_F32)
            dp_t = _dot(v, tl.trans(do), DOT_F32)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += _dot(_to_out(ds_t, Q.dtype.element_ty, SOFT_BF16), q, DOT_F32)

    dk = dk * sm_scale
    tl.store(DK + b64 * stride_dkb + hk64 * stride_dkh + k_row0 * stride_dkn + offs_n[:, None] * stride_dkn
             + offs_d[None, :], _to_out(dk, DK.dtype.element_ty, SOFT_BF16), mask=kv_mask)
    tl.store(DV + b64 * stride_dvb + hk64 * stride_dvh + k_row0 * stride_dvn + offs_n[:, None] * stride_dvn
             + offs_d[None, :], _to_out(dv, DV.dtype.element_ty, SOFT_BF16), mask=kv_mask)


@triton.jit
def _attention_bwd_stats_kernel(
    Q, K,  # as in the forward
    BIAS,  # fp32 (B, Hq, Sq, Sk) by strides (HAS_BIAS)
    LSE,  # fp32, forward's layout
    M2, LL2,  # fp32, LSE's layout: written here (see below)
    CU_Q, CU_K,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_bb, stride_bh, stride_bm, stride_bn,
    stride_lb, stride_lh,
    seqlen_q, seqlen_k,
    head_dim,
    group,
    qk_scale,
    window_left, window_right,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    HAS_WL: tl.constexpr,
    HAS_WR: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """Per query row the (m2, ll2) of the backward's p = exp2((s - m2) - ll2).

    Usually m2 = lse * log2(e) and ll2 = 0 (rows with no allowed key, lse = -inf: m2 = +inf, so every p
    is 0, not NaN). Rows masked only by huge finite biases (finfo.min, -1e9, -1e4) have |lse| so large
    that its rounding error (ulp >= 2^-13 past |lse| = 1024) swamps s - lse; for them the row max m2 and
    ll2 = log2(sum exp2(s - m2)) are recomputed from the logits and kept apart, so the backward sees the
    softmax the forward computed. A separate kernel, so the dq and dk/dv kernels keep their registers:
    blocks without such rows only convert lse."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q_start, sq, k_start, sk = _seq_bounds(CU_Q, CU_K, b, seqlen_q, seqlen_k, IS_VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= sq:
        return
    offset = sk - sq
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    q_row0 = q_start.to(tl.int64) + m0
    offs_m = tl.arange(0, BLOCK_M)
    rows = m0 + offs_m
    row_mask = rows < sq
    l_off = b64 * stride_lb + h64 * stride_lh + q_row0 + offs_m
    lse = tl.load(LSE + l_off, mask=row_mask, other=0.0)
    m2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    ll2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    huge = row_mask & (tl.abs(lse) > 1024.0) & (tl.abs(lse) < float("inf"))
    if tl.max(huge.to(tl.int32), 0) > 0:
        hk64 = (h // group).to(tl.int64)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < head_dim
        q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + q_row0 * stride_qm + offs_m[:, None] * stride_qm
                    + offs_d[None, :], mask=row_mask[:, None] & d_mask[None, :], other=0.0)
        k_base = K + b64 * stride_kb + hk64 * stride_kh + k_start.to(tl.int64) * stride_kn
        bias_base = BIAS + b64 * stride_bb + h64 * stride_bh + m0.to(tl.int64) * stride_bm
        m_r = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_r = tl.zeros([BLOCK_M], dtype=tl.float32)
        lo, hi = _key_range(m0, sk, offset, window_left, window_right, BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_WL, HAS_WR)
        for start_n in range(lo, hi, BLOCK_N):
            cols = start_n + offs_n
            n64 = tl.cast(start_n, tl.int64)
            k = tl.load(k_base + n64 * stride_kn + offs_n[:, None] * stride_kn + offs_d[None, :],
                        mask=(cols < sk)[:, None] & d_mask[None, :], other=0.0)
            s = _score_tile(q, k, bias_base + n64 * stride_bn, offs_m, offs_n, stride_bm, stride_bn, rows, cols,
                            sq, sk, offset, window_left, window_right, qk_scale, IS_CAUSAL, HAS_WL, HAS_WR,
                            HAS_BIAS, DOT_F32)
            m_new = tl.maximum(m_r, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_r = l_r * tl.exp2(m_r - m_use) + tl.sum(tl.exp2(s - m_use[:, None]), 1)
            m_r = m_new
        m2 = tl.where(huge, m_r, m2)
        ll2 = tl.where(huge, tl.log2(tl.where(huge, l_r, 1.0)), ll2)
    tl.store(M2 + l_off, m2, mask=row_mask)
    tl.store(LL2 + l_off, ll2, mask=row_mask)


@triton.jit
def _attention_bwd_dq_kernel(
    Q, K, V, BIAS, DOUT,
    M2, LL2,  # fp32, LSE's layout: the stats kernel's (m2, ll2)
    DELTA,
    DQ,  # like Q, q.dtype
    CU_Q, CU_K,
    stride_qb, stride_qm, stride_qh,
    stride_kb, stride_kn, stride_kh,
    stride_vb, stride_vn, stride_vh,
    stride_dob, stride_dom, stride_doh,
    stride_dqb, stride_dqm, stride_dqh,
    stride_bb, stride_bh, stride_bm, stride_bn,
    stride_lb, stride_lh,
    seqlen_q, seqlen_k,
    head_dim,
    group,
    sm_scale,
    qk_scale,
    window_left, window_right,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    HAS_WL: tl.constexpr,
    HAS_WR: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_F32: tl.constexpr,
    SOFT_BF16: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q_start, sq, k_start, sk = _seq_bounds(CU_Q, CU_K, b, seqlen_q, seqlen_k, IS_VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= sq:
        return
    offset = sk - sq
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    hk64 = (h // group).to(tl.int64)
    q_row0 = q_start.to(tl.int64) + m0
    k_row0 = k_start.to(tl.int64)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    rows = m0 + offs_m
    row_mask = rows < sq
    qd_mask = row_mask[:, None] & d_mask[None, :]
    q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + q_row0 * stride_qm + offs_m[:, None] * stride_qm
                + offs_d[None, :], mask=qd_mask, other=0.0)
    do = tl.load(DOUT + b64 * stride_dob + h64 * stride_doh + q_row0 * stride_dom + offs_m[:, None] * stride_dom
                 + offs_d[None, :], mask=qd_mask, other=0.0)
    m2 = tl.load(M2 + b64 * stride_lb + h64 * stride_lh + q_row0 + offs_m, mask=row_mask, other=0.0)
    ll2 = tl.load(LL2 + b64 * stride_lb + h64 * stride_lh + q_row0 + offs_m, mask=row_mask, other=0.0)
    delta = tl.load(DELTA + b64 * stride_lb + h64 * stride_lh + q_row0 + offs_m, mask=row_mask, other=0.0)
    k_base = K + b64 * stride_kb + hk64 * stride_kh + k_row0 * stride_kn
    v_base = V + b64 * stride_vb + hk64 * stride_vh + k_row0 * stride_vn
    bias_base = BIAS + b64 * stride_bb + h64 * stride_bh + m0.to(tl.int64) * stride_bm
    lo, hi = _key_range(m0, sk, offset, window_left, window_right, BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_WL, HAS_WR)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kv_mask = (cols < sk)[:, None] & d_mask[None, :]
        n64 = tl.cast(start_n, tl.int64)
        k = tl.load(k_base + n64 * stride_kn + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + n64 * stride_vn + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = _score_tile(q, k, bias_base + n64 * stride_bn, offs_m, offs_n, stride_bm, stride_bn, rows, cols, sq, sk, offset,
                        window_left, window_right, qk_scale, IS_CAUSAL, HAS_WL, HAS_WR, HAS_BIAS, DOT_F32)
        p = _prob_bwd(s, m2[:, None], ll2[:, None])
        dp = _dot(do, tl.trans(v), DOT_F32)
        ds = p * (dp - delta[:, None])
        dq += _dot(_to_out(ds, Q.dtype.element_ty, SOFT_BF16), k, DOT_F32)

    dq = dq * sm_scale
    tl.store(DQ + b64 * stride_dqb + h64 * stride_dqh + q_row0 * stride_dqm + offs_m[:, None] * stride_dqm
             + offs_d[None, :], _to_out(dq, DQ.dtype.element_ty, SOFT_BF16), mask=qd_mask)


# ---------------------------------------------------------------- launchers


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
