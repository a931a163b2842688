"""The backward's gradient kernels: dq per (query block, batch, q head) walking the key blocks, and
dk / dv per (key block, batch, kv head) walking the q heads of its group and their query blocks
(summed over the group without atomics: deterministic). See attention.py."""

import triton
import triton.language as tl

from ._attention_common import (_allowed, _bias_log2, _dot, _key_range, _prob_bwd, _query_range, _score_tile,
                                _seq_bounds)
from ._rounding import _to_out


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
