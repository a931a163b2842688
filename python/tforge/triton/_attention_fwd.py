"""The forward attention kernel: one program per (query block, batch, q head), an online softmax over
the key blocks of its causal / window band; writes out and the fp32 lse (see attention.py)."""

import triton
import triton.language as tl

from ._attention_common import _allowed, _bias_log2, _dot, _key_range, _seq_bounds
from ._rounding import _to_out


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
