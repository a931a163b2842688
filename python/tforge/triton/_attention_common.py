"""@triton.jit helpers the attention kernels share (semantics in attention.py's docstring): the dot
with fp32 accumulation, the clamped bias prescale, a sequence's bounds (padded or varlen), the allowed
(query, key) mask, the key-block range of a query block and the query-block range of a key block, the
score tile in log2 units, and the backward's capped probability."""

import triton
import triton.language as tl


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
