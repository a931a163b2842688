"""Triton int8 (W8A8) kernels: the exact int8 GEMM, the GEMM with a fused dequantising epilogue, and
symmetric per-row quantisation. Semantics are csrc/common/int8_args.h's (and ops/int8_gemm.py's references).

GEMM: acc = a @ b^T with a (M, K) and b (N, K) int8 (b in nn.Linear's weight layout, any strides), tl.dot on
int8 tiles with int32 accumulation (mma / wgmma on the GPU; exact), programs in groups of GROUP_M tile rows
for L2 reuse. Rows past M and columns past N wrap onto valid ones (their results are never stored), so
only K needs masks, and only when BLOCK_K does not divide it (zero padding is exact). The fused form
(FUSED) writes cast(float(acc) * a_scale[m] * b_scale[n] + bias[n]) in fp32 math, rounding after each
operation as the reference does (launched with enable_fp_fusion=False: no FMA contraction; the main loop is
integer, so nothing else changes), then to the output dtype with round-to-nearest-even.
Under TRITON_INTERPRET=1 the interpreter computes int8 tl.dot exactly (numpy matmul with an int32
result type), so the same code and tiles run there (the tile heuristics assume _common.INTERP_SM_COUNT
SMs); only bf16 rounding is done on the bits there (see norm._to_out, docs/triton-interpreter.md).

Quantisation: scale = absmax / 127 (NaN-propagating absmax, IEEE division), q = round_half_even(x / scale)
clamped to [-127, 127] (x / scale by div_rn, so q matches the fp32 reference bit for bit), q = 0 on rows
whose scale is 0 (and where x / scale is NaN). Rows up to _MAX_FUSED_Q elements are quantised from
registers; longer rows take two passes over chunks.
Launchers trust the caller (the ops layer validates) and only assert the layout they rely on.
"""

import torch
import triton
import triton.language as tl

from ._common import interpreting, sm_count
from .norm import _to_out

_MAX_FUSED_Q = 8192  # longest row (elements) quantised in one block
_Q_CHUNK = 4096  # chunk width of the two-pass quantisation
_Q_TILE = 4096  # elements per program when short rows are grouped
_Q_MAX_ROWS = 32


@triton.jit
def _int8_matmul_kernel(
    A,  # (M, K) int8, strides (stride_am, stride_ak)
    B,  # (N, K) int8, strides (stride_bn, stride_bk)
    C,  # (M, N) contiguous: int32, or the output dtype when FUSED
    A_SCALE,  # (M,) fp32 (read only when FUSED and HAS_A_SCALE)
    B_SCALE,  # (N,) fp32 (read only when FUSED)
    BIAS,  # (N,) fp32 (read only when FUSED and HAS_BIAS)
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bn,
    stride_bk,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
    FUSED: tl.constexpr,
    HAS_A_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFT_BF16: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Out-of-range rows / columns wrap onto valid ones: unmasked loads, results discarded at the store.
    rm = (offs_m % M).to(tl.int64)
    rn = (offs_n % N).to(tl.int64)
    a_ptrs = A + rm[:, None] * stride_am + offs_k[None, :] * stride_ak  # (BLOCK_M, BLOCK_K)
    b_ptrs = B + rn[None, :] * stride_bn + offs_k[:, None] * stride_bk  # (BLOCK_K, BLOCK_N): b^T, K-major
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - kt * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    m_mask = offs_m < M
    n_mask = offs_n < N
    c_ptrs = C + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if FUSED:
        x = acc.to(tl.float32)
        if HAS_A_SCALE:
            sa = tl.load(A_SCALE + offs_m, mask=m_mask, other=0.0)
            x = x * sa[:, None]
        sb = tl.load(B_SCALE + offs_n, mask=n_mask, other=0.0)
        x = x * sb[None, :]
        if HAS_BIAS:
            bias = tl.load(BIAS + offs_n, mask=n_mask, other=0.0)
            x = x + bias[None, :]
        tl.store(c_ptrs, _to_out(x, C.dtype.element_ty, SOFT_BF16), mask=mask)
    else:
        tl.store(c_ptrs, acc, mask=mask)


@triton.jit
def _nan_max(a, b):
    """max that propagates NaN (as torch.amax does), the same compiled and interpreted."""
    return tl.where((a > b) | (a != a), a, b)


@triton.jit
def _quantize(x, scale):
    """round_half_even(clamp(x / scale, -127, 127)) as int8; 0 where scale == 0 or x / scale is NaN.
    Clamping first is the same as clamping after rounding (rounding is monotonic, +-127 are fixed)."""
    safe = tl.where(scale == 0.0, 1.0, scale)
    y = tl.math.div_rn(x, safe)
    y = tl.where(y != y, 0.0, y)  # before the clamp: min / max drop NaN operands (compiled and interpreted)
    y = tl.minimum(tl.maximum(y, -127.0), 127.0)
    # 1.5 * 2^23: (y + c) - c rounds |y| < 2^22 to an integer, ties to even (fp32 adds, not folded).
    y = (y + 12582912.0) - 12582912.0
    y = tl.where(scale == 0.0, 0.0, y)
    return y.to(tl.int8)


@triton.jit
def _quantize_rows_kernel(
    X,  # (M, N), row stride stride_x, unit column stride; fp32 / bf16 / fp16
    Q,  # (M, N) contiguous int8
    SCALE,  # (M,) fp32
    M,
    N,
    stride_x,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if SINGLE_BLOCK:
        # BLOCK_M whole rows per program, held in registers.
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        row_mask = rows < M
        mask = row_mask[:, None] & (cols < N)[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        amax = tl.reduce(tl.abs(x), 1, _nan_max)
        scale = tl.math.div_rn(amax, tl.full(amax.shape, 127.0, tl.float32))
        q = _quantize(x, scale[:, None])
        tl.store(Q + rows64[:, None] * N + cols[None, :], q, mask=mask)
        tl.store(SCALE + rows, scale, mask=row_mask)
    else:
        # One row per program in BLOCK_N chunks: absmax pass, then quantise pass.
        row = pid.to(tl.int64)
        cols0 = tl.arange(0, BLOCK_N)
        x_row = X + row * stride_x
        q_row = Q + row * N
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for off in range(0, N, BLOCK_N):
            cols = off + cols0
            x = tl.load(x_row + cols, mask=cols < N, other=0.0).to(tl.float32)
            acc = _nan_max(acc, tl.abs(x))
        amax = tl.reduce(acc, 0, _nan_max)
        scale = tl.math.div_rn(amax, 127.0)
        for off in range(0, N, BLOCK_N):
            cols = off + cols0
            mask = cols < N
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(q_row + cols, _quantize(x, scale), mask=mask)
        tl.store(SCALE + row, scale)


# ---------------------------------------------------------------- launchers


def _gemm_config(M, N, K, sms, aligned=True):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Large problems: 128x256x128 tiles (two wgmma
    warpgroups on sm_90); fewer tiles than SMs: 128x128 or 64x128; decode-like M <= 64: a BLOCK_M that
    covers M and a BLOCK_N small enough for about two programs per SM (the GEMM streams b).
    Not `aligned` (K, a row stride or b row stride not a multiple of 16, a base pointer not 16-byte
    aligned, or a K stride other than 1): the loads cannot be 16-byte vectors, the pipeliner keeps the
    tiles in registers and the large configs spill (sm_90, triton 3.8), so small tiles.
    The interpreter gets the same tiles (with sms = _common.INTERP_SM_COUNT)."""
    if not aligned:
        return (16, 32, 64, 4, 2) if M <= 16 else (64, 64, 32, 4, 2)
    bk = 128 if K > 64 else 64
    if M <= 64:
        bm = max(16, triton.next_power_of_2(M))
        bn = 128
        while bn > 32 and triton.cdiv(M, bm) * triton.cdiv(N, bn) < 2 * sms:
            bn //= 2
        bk = 256 if K >= 1024 else bk
        # 4 stages where they fit in 160 KiB of shared memory (sm_80 has 163 KiB), else 3.
        return bm, bn, bk, 4, 4 if (bm + bn) * bk * 4 <= 160 * 1024 else 3
    if triton.cdiv(M, 128) * triton.cdiv(N, 256) >= sms:
        return 128, 256, bk, 8, 3
    if triton.cdiv(M, 128) * triton.cdiv(N, 128) >= sms:
        return 128, 128, bk, 8, 4
    return 64, 128, bk, 4, 4


def _aligned16(a, b, stride_am, stride_bn):
    return (a.shape[1] % 16 == 0 and a.stride(1) == 1 and b.stride(1) == 1 and stride_am % 16 == 0
            and stride_bn % 16 == 0 and a.data_ptr() % 16 == 0 and b.data_ptr() % 16 == 0)


def _launch_gemm(a, b, c, a_scale, b_scale, bias, fused):
    M, K = a.shape
    N = b.shape[0]
    sms = sm_count(a)
    # A single row's stride is never used: 0 lets the compiler see aligned rows.
    stride_am = a.stride(0) if M > 1 else 0
    stride_bn = b.stride(0) if N > 1 else 0
    block_m, block_n, block_k, warps, stages = _gemm_config(M, N, K, sms,
                                                            _aligned16(a, b, stride_am, stride_bn))
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n),)
    _int8_matmul_kernel[grid](
        a, b, c,
        a_scale if a_scale is not None else c,
        b_scale if b_scale is not None else c,
        bias if bias is not None else c,
        M, N, K,
        stride_am, a.stride(1), stride_bn, b.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
        EVEN_K=K % block_k == 0,
        FUSED=fused,
        HAS_A_SCALE=a_scale is not None,
        HAS_BIAS=bias is not None,
        SOFT_BF16=c.dtype == torch.bfloat16 and interpreting(a),
        num_warps=warps, num_stages=stages,
        enable_fp_fusion=False,  # the epilogue rounds each product and the sum, as the reference does
    )


def _check_gemm(a, b):
    assert a.dim() == 2 and b.dim() == 2 and a.dtype == torch.int8 and b.dtype == torch.int8, \
        "int8 GEMM: a (M, K) and b (N, K) must be 2-D int8"
    assert a.shape[1] == b.shape[1], "int8 GEMM: a and b must have the same K"


def int8_matmul(a, b):
    """Exact a @ b.T in int32: a (M, K), b (N, K) int8, any strides. Returns (M, N) int32 contiguous."""
    _check_gemm(a, b)
    M, N = a.shape[0], b.shape[0]
    c = torch.empty((M, N), dtype=torch.int32, device=a.device)
    if M == 0 or N == 0:
        return c
    _launch_gemm(a, b, c, None, None, None, fused=False)
    return c


def int8_linear(a, a_scale, b, b_scale, bias, out_dtype):
    """cast(float(a @ b.T) * a_scale[:, None] * b_scale[None, :] + bias[None, :]) to out_dtype, fused.
    a (M, K), b (N, K) int8, any strides; a_scale (M,) fp32 or None (= 1); b_scale (N,) fp32;
    bias (N,) fp32 or None; out_dtype fp32 / bf16 / fp16. Returns (M, N) contiguous."""
    _check_gemm(a, b)
    M, N = a.shape[0], b.shape[0]
    assert out_dtype in (torch.float32, torch.bfloat16, torch.float16), "int8_linear: fp32 / bf16 / fp16 output"
    for name, t, n in (("a_scale", a_scale, M), ("b_scale", b_scale, N), ("bias", bias, N)):
        assert t is None or (t.dtype == torch.float32 and t.dim() == 1 and t.shape[0] == n), \
            f"int8_linear: {name} must be fp32 of shape ({n},)"
    assert b_scale is not None, "int8_linear: b_scale is required"
    c = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return c
    a_scale = a_scale.contiguous() if a_scale is not None else None
    bias = bias.contiguous() if bias is not None else None
    _launch_gemm(a, b, c, a_scale, b_scale.contiguous(), bias, fused=True)
    return c


def _q_num_warps(elems):
    return max(1, min(16, elems // 512))


def quantize_rows(x):
    """Symmetric per-row int8 of x (M, K) fp32 / bf16 / fp16 with stride(1) == 1 (any row stride).
    Returns (q int8 (M, K) contiguous, scale fp32 (M,))."""
    assert x.dim() == 2 and (x.stride(1) == 1 or x.shape[1] <= 1), "quantize_rows: x must be 2-D, unit column stride"
    assert x.dtype in (torch.float32, torch.bfloat16, torch.float16), "quantize_rows: fp32 / bf16 / fp16 input"
    M, N = x.shape
    q = torch.empty((M, N), dtype=torch.int8, device=x.device)
    scale = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0:
        return q, scale
    if N == 0:
        return q, scale.zero_()  # absmax of nothing: 0 (the ops layer rejects empty rows)
    block_n = triton.next_power_of_2(N)
    if block_n <= _MAX_FUSED_Q:
        block_m = max(1, min(_Q_MAX_ROWS, _Q_TILE // block_n, triton.next_power_of_2(M)))
        grid = (triton.cdiv(M, block_m),)
        single, warps = True, _q_num_warps(block_m * block_n)
    else:
        block_m, block_n = 1, _Q_CHUNK
        grid = (M,)
        single, warps = False, _q_num_warps(_Q_CHUNK)
    _quantize_rows_kernel[grid](
        x, q, scale, M, N, x.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, SINGLE_BLOCK=single, num_warps=warps,
    )
    return q, scale
