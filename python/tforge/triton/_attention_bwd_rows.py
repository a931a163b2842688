"""The backward's per-row kernels, run before the gradient kernels: the preprocess kernel's
delta = rowsum(dO * O) and the stats kernel's (m2, ll2), with which p = exp2((s - m2) - ll2)
(see attention.py)."""

import triton
import triton.language as tl

from ._attention_common import _key_range, _score_tile, _seq_bounds


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
