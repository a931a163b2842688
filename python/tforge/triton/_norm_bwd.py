"""The LayerNorm / RMSNorm backward kernels: dx (plus the residual's gradient) with per-program fp32
dweight / dbias partials, and the reduction of those partials in a fixed order (see norm.py)."""

import triton
import triton.language as tl

from ._rounding import _to_out


@triton.jit
def _norm_bwd_dx_kernel(
    DY,  # (M, N), row stride stride_dy
    DRES,  # (M, N), row stride stride_dres (read only when HAS_DRES)
    X,  # (M, N), row stride stride_x: the normalised input
    W,  # (N,) (read only when HAS_W)
    MEAN,  # (M,) fp32 (read only when not RMS)
    RSTD,  # (M,) fp32
    DX,  # (M, N) contiguous, x.dtype
    DW_PART,  # (P, N) fp32: this program's sum of dy * xhat over its rows (HAS_DW)
    DB_PART,  # (P, N) fp32: this program's sum of dy over its rows (HAS_DB)
    C_SCRATCH,  # (2, M) fp32: per-row c1, c2 (chunked path only)
    M,
    N,
    stride_dy,
    stride_dres,
    stride_x,
    rows_per_prog,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
    HAS_DRES: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_DW: tl.constexpr,
    HAS_DB: tl.constexpr,
    RMS: tl.constexpr,
    SOFT_BF16: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row_start = pid * rows_per_prog
    row_end = tl.minimum(row_start + rows_per_prog, M)
    inv_n = 1.0 / N
    if SINGLE_BLOCK:
        cols = tl.arange(0, BLOCK_N)
        col_mask = cols < N
        if HAS_W:
            w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
        acc_dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_db = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for r0 in range(row_start, row_end, BLOCK_M):
            rows = r0 + tl.arange(0, BLOCK_M).to(tl.int64)
            row_mask = rows < row_end
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
            if RMS:
                xhat = x * rstd[:, None]
            else:
                mean = tl.load(MEAN + rows, mask=row_mask, other=0.0)
                xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
            if HAS_W:
                g = dy * w[None, :]
            else:
                g = dy
            c1 = tl.sum(g * xhat, axis=1) * inv_n
            if RMS:
                dx = rstd[:, None] * (g - xhat * c1[:, None])
            else:
                c2 = tl.sum(g, axis=1) * inv_n
                dx = rstd[:, None] * (g - c2[:, None] - xhat * c1[:, None])
            if HAS_DRES:
                dres = tl.load(DRES + rows[:, None] * stride_dres + cols[None, :], mask=mask, other=0.0)
                dx += dres.to(tl.float32)
            dx = _to_out(dx, DX.dtype.element_ty, SOFT_BF16)
            tl.store(DX + rows[:, None] * N + cols[None, :], dx, mask=mask)
            if HAS_DW:
                acc_dw += dy * xhat
            if HAS_DB:
                acc_db += dy
        # Every program writes its whole partial row (zeros when it had no rows), so no memset is needed.
        if HAS_DW:
            tl.store(DW_PART + pid * N + cols, tl.sum(acc_dw, axis=0), mask=col_mask)
        if HAS_DB:
            tl.store(DB_PART + pid * N + cols, tl.sum(acc_db, axis=0), mask=col_mask)
    else:
        cols0 = tl.arange(0, BLOCK_N)
        # Pass 1, row by row: c1 = sum(g * xhat) / N and c2 = sum(g) / N into the scratch.
        for row in range(row_start, row_end):
            x_row = X + row * stride_x
            dy_row = DY + row * stride_dy
            rstd = tl.load(RSTD + row)
            if RMS:
                mean = 0.0
            else:
                mean = tl.load(MEAN + row)
            acc1 = tl.zeros([BLOCK_N], dtype=tl.float32)
            acc2 = tl.zeros([BLOCK_N], dtype=tl.float32)
            for off in range(0, N, BLOCK_N):
                cols = off + cols0
                mask = cols < N
                x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
                xhat = tl.where(mask, (x - mean) * rstd, 0.0)
                if HAS_W:
                    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
                    g = dy * w
                else:
                    g = dy
                acc1 += g * xhat
                if not RMS:
                    acc2 += g
            tl.store(C_SCRATCH + row, tl.sum(acc1, axis=0) * inv_n)
            if not RMS:
                tl.store(C_SCRATCH + M + row, tl.sum(acc2, axis=0) * inv_n)
        tl.debug_barrier()
        # Pass 2, column chunk outer and rows inner, so the dweight / dbias partials stay in registers.
        for off in range(0, N, BLOCK_N):
            cols = off + cols0
            mask = cols < N
            if HAS_W:
                w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
            acc_dw = tl.zeros([BLOCK_N], dtype=tl.float32)
            acc_db = tl.zeros([BLOCK_N], dtype=tl.float32)
            for row in range(row_start, row_end):
                rstd = tl.load(RSTD + row)
                c1 = tl.load(C_SCRATCH + row)
                x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
                if RMS:
                    xhat = x * rstd
                else:
                    mean = tl.load(MEAN + row)
                    xhat = tl.where(mask, (x - mean) * rstd, 0.0)
                if HAS_W:
                    g = dy * w
                else:
                    g = dy
                if RMS:
                    dx = rstd * (g - xhat * c1)
                else:
                    c2 = tl.load(C_SCRATCH + M + row)
                    dx = rstd * (g - c2 - xhat * c1)
                if HAS_DRES:
                    dres = tl.load(DRES + row * stride_dres + cols, mask=mask, other=0.0)
                    dx += dres.to(tl.float32)
                tl.store(DX + row * N + cols, _to_out(dx, DX.dtype.element_ty, SOFT_BF16), mask=mask)
                if HAS_DW:
                    acc_dw += dy * xhat
                if HAS_DB:
                    acc_db += dy
            if HAS_DW:
                tl.store(DW_PART + pid * N + cols, acc_dw, mask=mask)
            if HAS_DB:
                tl.store(DB_PART + pid * N + cols, acc_db, mask=mask)


@triton.jit
def _norm_bwd_reduce_kernel(
    DW_PART,  # (P, N) fp32 (HAS_DW)
    DB_PART,  # (P, N) fp32 (HAS_DB)
    DW,  # (N,) out dtype (HAS_DW)
    DB,  # (N,) out dtype (HAS_DB)
    P,
    N,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_DW: tl.constexpr,
    HAS_DB: tl.constexpr,
    SOFT_BF16: tl.constexpr,
):
    # Column block per program; a fixed summation order over P keeps the result deterministic.
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    acc_dw = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    acc_db = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        ps = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        mask = (ps < P)[:, None] & col_mask[None, :]
        offs = ps[:, None] * N + cols[None, :]
        if HAS_DW:
            acc_dw += tl.load(DW_PART + offs, mask=mask, other=0.0)
        if HAS_DB:
            acc_db += tl.load(DB_PART + offs, mask=mask, other=0.0)
    if HAS_DW:
        tl.store(DW + cols, _to_out(tl.sum(acc_dw, axis=0), DW.dtype.element_ty, SOFT_BF16), mask=col_mask)
    if HAS_DB:
        tl.store(DB + cols, _to_out(tl.sum(acc_db, axis=0), DB.dtype.element_ty, SOFT_BF16), mask=col_mask)
