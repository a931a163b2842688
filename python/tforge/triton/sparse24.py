"""Triton 2:4 sparse linear and n:m mask kernels. Semantics are ops/sparse24.py's (and its references).

Sparse linear: y (M, N) = x (M, K) @ W^T (+ bias), W (N, K) held packed as values (N, K/2) and meta
(N, ceil(K/8)) uint8 (one nibble i0 | i1 << 2 per group of 4 columns, low nibble first). Each program
owns a BLOCK_M x BLOCK_N tile of y and walks K in BLOCK_K steps (a multiple of 8, so a step starts on a
metadata byte): it loads the (BLOCK_N, BLOCK_K/2) values and (BLOCK_N, BLOCK_K/8) meta bytes with
contiguous rows, splits them into the two kept values and two positions per group, expands the group
to its 4 dense columns in registers (select on the position), and feeds the dense tile to tl.dot with
fp32 accumulation. Int8 values (weight-only int8 2:4) are converted to x's dtype (exact) and the fp32
accumulator is multiplied by scale[n] before the bias. Rows past M and columns past N wrap onto valid
ones (their results are never stored); only K needs masks.

fp32 inputs use IEEE products (no TF32). Under TRITON_INTERPRET=1 (the CPU test path) the launcher picks
the GPU's tiles, warps and stages; only bf16 inputs differ there (docs/triton-interpreter.md): their
tl.dot runs on fp32 operands (the interpreter multiplies bf16 bit patterns as integers, and converts
int8 to bf16 as bit patterns too) and bf16 rounding is done on the bits (norm._to_out).

n:m mask: per element, rank = #(scores in its group that are larger, or equal at a lower column);
keep when rank < n. m is a compile-time constant (any 1 <= n <= m <= 16).
Launchers trust the caller (the ops layer validates) and only assert the layout they rely on.
"""

import torch
import triton
import triton.language as tl

from ._common import interpreting
from .norm import _to_out


@triton.jit
def _sparse24_linear_kernel(
    X,  # (M, K), row stride stride_x, unit column stride; fp32 / bf16 / fp16
    V,  # (N, K/2) contiguous: x's dtype, or int8 when HAS_SCALE
    META,  # (N, MB) contiguous uint8, MB = ceil(K/8)
    Y,  # (M, N) contiguous, x's dtype
    SCALE,  # (N,) fp32 (read only when HAS_SCALE)
    BIAS,  # (N,) fp32 (read only when HAS_BIAS)
    M,
    N,
    K,
    MB,
    stride_x,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_F32: tl.constexpr,
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
    rm = (offs_m % M).to(tl.int64)
    rn = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = tl.arange(0, BLOCK_K // 2)  # values of the step's BLOCK_K / 4 groups
    offs_b = tl.arange(0, BLOCK_K // 8)  # their metadata bytes
    x_ptrs = X + rm[:, None] * stride_x + offs_k[None, :]  # (BLOCK_M, BLOCK_K)
    v_ptrs = V + rn[:, None] * (K // 2) + offs_v[None, :]  # (BLOCK_N, BLOCK_K/2)
    m_ptrs = META + rn[:, None] * MB + offs_b[None, :]  # (BLOCK_N, BLOCK_K/8)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        k0 = kt * BLOCK_K
        x = tl.load(x_ptrs, mask=offs_k[None, :] < K - k0, other=0.0)
        v = tl.load(v_ptrs, mask=offs_v[None, :] < K // 2 - k0 // 2, other=0)
        b = tl.load(m_ptrs, mask=offs_b[None, :] < MB - k0 // 8, other=0).to(tl.int32)
        # Group g of the step: byte g // 2, low nibble for even g; values 2g and 2g + 1.
        nib = tl.reshape(tl.join(b & 0xF, b >> 4), (BLOCK_N, BLOCK_K // 4))
        i0 = nib & 3
        i1 = nib >> 2
        v0, v1 = tl.split(tl.reshape(v, (BLOCK_N, BLOCK_K // 4, 2)))
        zero = tl.zeros_like(v0)
        d0 = tl.where(i0 == 0, v0, zero)  # position 0 can only be the first kept slot
        d1 = tl.where(i0 == 1, v0, tl.where(i1 == 1, v1, zero))
        d2 = tl.where(i0 == 2, v0, tl.where(i1 == 2, v1, zero))
        d3 = tl.where(i1 == 3, v1, zero)  # position 3 can only be the second
        # join(join(d0, d2), join(d1, d3))[..., a, b] = d_{2a + b}: the 4 columns in order.
        w = tl.reshape(tl.join(tl.join(d0, d2), tl.join(d1, d3)), (BLOCK_N, BLOCK_K))
        if DOT_F32:
            acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
        x_ptrs += BLOCK_K
        v_ptrs += BLOCK_K // 2
        m_ptrs += BLOCK_K // 8

    n_mask = offs_n < N
    if HAS_SCALE:
        s = tl.load(SCALE + offs_n, mask=n_mask, other=0.0)
        acc = acc * s[None, :]
    if HAS_BIAS:
        bias = tl.load(BIAS + offs_n, mask=n_mask, other=0.0)
        acc = acc + bias[None, :]
    y_ptrs = Y + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    mask = (offs_m < M)[:, None] & n_mask[None, :]
    tl.store(y_ptrs, _to_out(acc, Y.dtype.element_ty, SOFT_BF16), mask=mask)


@triton.jit
def _nm_mask_kernel(
    S,  # (R, C), row stride stride_s, unit column stride; fp32 / bf16 / fp16
    MASK,  # (R, C) contiguous uint8 (a bool tensor's storage)
    R,
    C,
    stride_s,
    N_KEEP: tl.constexpr,
    M_GROUP: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    inb = (rows < R)[:, None] & (cols < C)[None, :]
    row_ptr = S + rows.to(tl.int64)[:, None] * stride_s
    s = tl.load(row_ptr + cols[None, :], mask=inb, other=0.0)
    base = (cols // M_GROUP) * M_GROUP
    pos = cols - base
    rank = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.int32)
    for j in tl.static_range(M_GROUP):
        sj = tl.load(row_ptr + (base + j)[None, :], mask=inb, other=0.0)
        beats = (sj > s) | ((sj == s) & (j < pos)[None, :])
        rank += beats.to(tl.int32)
    keep = (rank < N_KEEP).to(tl.uint8)
    tl.store(MASK + rows.to(tl.int64)[:, None] * C + cols[None, :], keep, mask=inb)


# ---------------------------------------------------------------- launchers


def _linear_config(M, N, K, fp32):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), the same under the interpreter."""
    if fp32:  # fp32 tiles take twice the registers and shared memory
        return (16 if M <= 16 else 64), 64, 32, 4, 3
    if M <= 64:
        return max(16, triton.next_power_of_2(M)), 64, 128, 4, 4
    if M <= 256:
        return 64, 128, 64, 4, 4
    return 128, 128, 64, 8, 3


def sparse24_linear(x, values, meta, scale, bias, y):
    """y = x @ W^T (* scale) (+ bias) into y. x (M, K) with unit column stride (any row stride);
    values (N, K/2) contiguous (x's dtype, or int8 with scale); meta (N, ceil(K/8)) uint8 contiguous;
    scale, bias (N,) fp32 contiguous or None; y (M, N) contiguous in x's dtype."""
    M, K = x.shape
    N = values.shape[0]
    assert x.dim() == 2 and (x.stride(1) == 1 or K <= 1), "sparse24_linear: x must be 2-D, unit column stride"
    assert K % 4 == 0 and values.shape == (N, K // 2) and values.is_contiguous(), "sparse24_linear: values layout"
    assert meta.dtype == torch.uint8 and meta.is_contiguous() and meta.shape[0] == N, "sparse24_linear: meta layout"
    assert y.shape == (M, N) and y.is_contiguous() and y.dtype == x.dtype, "sparse24_linear: y layout"
    assert (values.dtype == torch.int8) == (scale is not None), "sparse24_linear: int8 values need a scale"
    if M == 0 or N == 0:
        return y
    interp_bf16 = x.dtype == torch.bfloat16 and interpreting(x)  # docs/triton-interpreter.md
    block_m, block_n, block_k, warps, stages = _linear_config(M, N, K, x.dtype == torch.float32)
    grid = (triton.cdiv(M, block_m) * triton.cdiv(N, block_n),)
    _sparse24_linear_kernel[grid](
        x, values, meta, y,
        scale if scale is not None else y,
        bias if bias is not None else y,
        M, N, K, meta.shape[1], x.stride(0) if M > 1 else 0,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
        HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
        DOT_F32=x.dtype == torch.float32 or interp_bf16,
        SOFT_BF16=interp_bf16,
        num_warps=warps, num_stages=stages,
    )
    return y


def nm_mask(scores, n, m, mask):
    """Write the n:m mask of scores (R, C) (unit column stride, C % m == 0) into mask (R, C) bool."""
    R, C = scores.shape
    assert scores.stride(1) == 1 or C <= 1, "nm_mask: scores must have unit column stride"
    assert C % m == 0 and 1 <= n <= m, "nm_mask: C must be a multiple of m, 1 <= n <= m"
    assert mask.shape == (R, C) and mask.dtype == torch.bool and mask.is_contiguous(), "nm_mask: mask layout"
    if R == 0 or C == 0:
        return mask
    block_c = min(256, triton.next_power_of_2(C))
    block_r = max(1, min(64, 4096 // block_c, triton.next_power_of_2(R)))
    grid = (triton.cdiv(R, block_r), triton.cdiv(C, block_c))
    _nm_mask_kernel[grid](scores, mask.view(torch.uint8), R, C, scores.stride(0) if R > 1 else 0,
                          N_KEEP=n, M_GROUP=m, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)
    return mask
