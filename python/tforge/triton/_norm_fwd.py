"""The LayerNorm / RMSNorm forward kernel, optionally fused with a residual add: BLOCK_M whole rows
per program held in registers, or one row per program walked in chunks (see norm.py)."""

import triton
import triton.language as tl

from ._rounding import _to_out


@triton.jit
def _norm_fwd_kernel(
    X,  # (M, N), row stride stride_x, unit column stride
    RES,  # (M, N), row stride stride_res (read only when HAS_RES)
    RES_OUT,  # (M, N) contiguous, x.dtype: rounded x + residual (written only when HAS_RES)
    Y,  # (M, N) contiguous, x.dtype
    W,  # (N,) (read only when HAS_W)
    B,  # (N,) (read only when HAS_B)
    MEAN,  # (M,) fp32 (written only when not RMS)
    RSTD,  # (M,) fp32
    M,
    N,
    stride_x,
    stride_res,
    eps,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RMS: tl.constexpr,
    SOFT_BF16: tl.constexpr,
):
    pid = tl.program_id(0)
    inv_n = 1.0 / N
    if SINGLE_BLOCK:
        # BLOCK_M whole rows per program, held in registers.
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        row_mask = rows < M
        col_mask = cols < N
        mask = row_mask[:, None] & col_mask[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            r = tl.load(RES + rows64[:, None] * stride_res + cols[None, :], mask=mask, other=0.0)
            s = _to_out(x + r.to(tl.float32), RES_OUT.dtype.element_ty, SOFT_BF16)
            tl.store(RES_OUT + rows64[:, None] * N + cols[None, :], s, mask=mask)
            x = s.to(tl.float32)
        if RMS:
            rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) * inv_n + eps)
            xhat = x * rstd[:, None]
        else:
            mean = tl.sum(x, axis=1) * inv_n
            d = tl.where(mask, x - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) * inv_n + eps)
            tl.store(MEAN + rows, mean, mask=row_mask)
            xhat = d * rstd[:, None]
        tl.store(RSTD + rows, rstd, mask=row_mask)
        y = xhat
        if HAS_W:
            w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
            y = y * w[None, :]
        if HAS_B:
            b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
            y = y + b[None, :]
        y = _to_out(y, Y.dtype.element_ty, SOFT_BF16)
        tl.store(Y + rows64[:, None] * N + cols[None, :], y, mask=mask)
    else:
        # One row per program, walked in BLOCK_N chunks: sum pass, (variance pass), output pass.
        row = pid.to(tl.int64)
        cols0 = tl.arange(0, BLOCK_N)
        x_row = X + row * stride_x
        res_row = RES + row * stride_res
        s_row = RES_OUT + row * N
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for off in range(0, N, BLOCK_N):
            cols = off + cols0
            mask = cols < N
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_RES:
                r = tl.load(res_row + cols, mask=mask, other=0.0)
                s = _to_out(x + r.to(tl.float32), RES_OUT.dtype.element_ty, SOFT_BF16)
                tl.store(s_row + cols, s, mask=mask)
                x = s.to(tl.float32)
            if RMS:
                acc += x * x
            else:
                acc += x
        if HAS_RES:
            # Later passes read the rounded sum back; make every thread's stores visible first.
            tl.debug_barrier()
            src = s_row
        else:
            src = x_row
        if RMS:
            mean = 0.0
            rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) * inv_n + eps)
        else:
            mean = tl.sum(acc, axis=0) * inv_n
            acc2 = tl.zeros([BLOCK_N], dtype=tl.float32)
            for off in range(0, N, BLOCK_N):
                cols = off + cols0
                mask = cols < N
                x = tl.load(src + cols, mask=mask, other=0.0).to(tl.float32)
                d = tl.where(mask, x - mean, 0.0)
                acc2 += d * d
            rstd = 1.0 / tl.sqrt(tl.sum(acc2, axis=0) * inv_n + eps)
            tl.store(MEAN + row, mean)
        tl.store(RSTD + row, rstd)
        y_row = Y + row * N
        for off in range(0, N, BLOCK_N):
            cols = off + cols0
            mask = cols < N
            x = tl.load(src + cols, mask=mask, other=0.0).to(tl.float32)
            y = (x - mean) * rstd
            if HAS_W:
                w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
                y = y * w
            if HAS_B:
                b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
                y = y + b
            tl.store(y_row + cols, _to_out(y, Y.dtype.element_ty, SOFT_BF16), mask=mask)
