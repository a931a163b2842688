"""Triton LayerNorm / RMSNorm, optionally fused with a residual add: forward and backward.

Same math as csrc/cpu/norm_kernels.h: fp32 accumulation, mean and variance in two passes, and with a
residual the norm is taken of s = x + residual *rounded to x.dtype*, so y == norm(residual_out) exactly.
Rows of up to _MAX_FUSED_* elements stay in registers (one 2-D tile of BLOCK_M rows per step); longer
rows are walked in chunks. The backward accumulates dweight / dbias per program into an fp32 (P, N)
partial buffer (no atomics, so results are deterministic for a given P) and a second kernel reduces it.
Under TRITON_INTERPRET=1 the launchers pick the GPU's tiles, warps and program counts (with the SM
count of _common.INTERP_SM_COUNT); only bf16 rounding differs there (see _to_out), and the dweight /
dbias reduction of rows wider than 4096 takes wider column blocks unless TFORGE_TRITON_GPU_CONFIGS=1
(docs/triton-interpreter.md). Launchers trust the caller (the ops layer validates) and only assert the
layout they rely on.
"""

import torch
import triton
import triton.language as tl

from ._common import INTERP_MAX_PROGRAMS, force_gpu_configs, interpreting, sm_count

# Longest row (elements) kept entirely in registers; longer rows take the chunked path.
_MAX_FUSED_FWD = 8192
_MAX_FUSED_BWD = 8192
# Chunk width (elements) for the chunked path, and the tile size small rows are grouped up to.
_CHUNK = 4096
_TILE = 2048
_MAX_ROWS_PER_TILE = 16
# Tile of the dweight / dbias reduction over the (P, N) partials.
_REDUCE_BLOCK_P = 32
_REDUCE_BLOCK_N = 64


@triton.jit
def _to_out(v, dtype: tl.constexpr, SOFT_BF16: tl.constexpr):
    """fp32 -> output dtype, rounding to nearest even. The Triton interpreter truncates fp32 -> bf16
    (compiled code rounds), so under it (SOFT_BF16) the rounding is done on the bits instead."""
    if SOFT_BF16:
        u = v.to(tl.uint32, bitcast=True)
        u = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
        r = u.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        out = tl.where(v != v, v.to(tl.bfloat16), r)
    else:
        out = v.to(dtype)
    return out


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


def _unit_col_stride(t):
    return t.dim() == 2 and (t.stride(1) == 1 or t.shape[1] <= 1)


def _soft_bf16(x):
    # Round bf16 outputs by hand only where the interpreter runs the kernel (see _to_out).
    return x.dtype == torch.bfloat16 and interpreting(x)


def _num_warps(elems):
    return max(1, min(16, elems // 256))


def _tile(n, m, max_fused):
    """(single_block, BLOCK_M, BLOCK_N, num_warps) for rows of n elements, m rows."""
    block_n = triton.next_power_of_2(n)
    if block_n > max_fused:
        return False, 1, _CHUNK, _num_warps(_CHUNK)
    block_m = max(1, min(_MAX_ROWS_PER_TILE, _TILE // block_n, triton.next_power_of_2(max(m, 1))))
    return True, block_m, block_n, _num_warps(block_m * block_n)


def norm_fwd(x, residual, weight, bias, eps: float, rms: bool):
    """x, residual: (M, N) tensors with stride(1) == 1 and any stride(0) >= N (residual may be None).
    weight, bias: (N,) contiguous, same dtype as x, or None (bias is None for rms).
    Returns (y, residual_out, mean, rstd): y (M, N) contiguous in x.dtype; residual_out = x + residual
    rounded to x.dtype (None when residual is None); mean fp32 (M,) (None for rms); rstd fp32 (M,)."""
    assert _unit_col_stride(x), "norm_fwd: x must be 2-D with unit column stride"
    assert residual is None or (_unit_col_stride(residual) and residual.shape == x.shape)
    M, N = x.shape
    dev = x.device
    y = torch.empty((M, N), dtype=x.dtype, device=dev)
    residual_out = None if residual is None else torch.empty((M, N), dtype=x.dtype, device=dev)
    mean = None if rms else torch.empty((M,), dtype=torch.float32, device=dev)
    rstd = torch.empty((M,), dtype=torch.float32, device=dev)
    if M == 0:
        return y, residual_out, mean, rstd
    if N == 0:
        # What the arithmetic gives (0 * 1/0), as in the CPU kernel; the ops layer normally rejects N == 0.
        rstd.fill_(float("nan"))
        if mean is not None:
            mean.fill_(float("nan"))
        return y, residual_out, mean, rstd
    single, block_m, block_n, num_warps = _tile(N, M, _MAX_FUSED_FWD)
    grid = (triton.cdiv(M, block_m),)
    _norm_fwd_kernel[grid](
        x,
        residual if residual is not None else x,
        residual_out if residual_out is not None else y,
        y,
        weight if weight is not None else y,
        bias if bias is not None else y,
        mean if mean is not None else rstd,
        rstd,
        M,
        N,
        x.stride(0),
        residual.stride(0) if residual is not None else 0,
        float(eps),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        SINGLE_BLOCK=single,
        HAS_RES=residual is not None,
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        RMS=bool(rms),
        SOFT_BF16=_soft_bf16(x),
        num_warps=num_warps,
    )
    return y, residual_out, mean, rstd


def norm_bwd(dy, dresidual_out, x, weight, mean, rstd, rms: bool, has_bias: bool):
    """dy, dresidual_out (may be None), x: (M, N), stride(1) == 1, any row stride. x is the normalised
    input (residual_out for the fused op). Returns (dx, dweight, dbias): dx (M, N) contiguous in
    x.dtype (+ dresidual_out when given); dweight (N,) in x.dtype when weight is not None else None;
    dbias (N,) in x.dtype when has_bias else None."""
    assert _unit_col_stride(x) and _unit_col_stride(dy), "norm_bwd: x, dy must be 2-D with unit column stride"
    assert dresidual_out is None or _unit_col_stride(dresidual_out)
    M, N = x.shape
    dev = x.device
    has_dw = weight is not None
    has_db = bool(has_bias)
    dx = torch.empty((M, N), dtype=x.dtype, device=dev)
    if M == 0 or N == 0:
        dweight = torch.zeros((N,), dtype=x.dtype, device=dev) if has_dw else None
        dbias = torch.zeros((N,), dtype=x.dtype, device=dev) if has_db else None
        return dx, dweight, dbias
    rstd = rstd.contiguous()
    if not rms:
        mean = mean.contiguous()
    single, block_m, block_n, num_warps = _tile(N, M, _MAX_FUSED_BWD)
    tiles = triton.cdiv(M, block_m)
    if has_dw or has_db:
        programs = sm_count(x) * max(1, min(8, 32 // num_warps))
        # Whole tiles per program, then drop the programs that would get nothing.
        rows_per_prog = triton.cdiv(tiles, min(programs, tiles)) * block_m
    else:
        rows_per_prog = block_m
    P = triton.cdiv(M, rows_per_prog)
    part_dw = torch.empty((P, N), dtype=torch.float32, device=dev) if has_dw else None
    part_db = torch.empty((P, N), dtype=torch.float32, device=dev) if has_db else None
    scratch = rstd if single else torch.empty((2, M), dtype=torch.float32, device=dev)
    _norm_bwd_dx_kernel[(P,)](
        dy,
        dresidual_out if dresidual_out is not None else dy,
        x,
        weight if has_dw else x,
        mean if not rms else rstd,
        rstd,
        dx,
        part_dw if has_dw else rstd,
        part_db if has_db else rstd,
        scratch,
        M,
        N,
        dy.stride(0),
        dresidual_out.stride(0) if dresidual_out is not None else 0,
        x.stride(0),
        rows_per_prog,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        SINGLE_BLOCK=single,
        HAS_DRES=dresidual_out is not None,
        HAS_W=has_dw,
        HAS_DW=has_dw,
        HAS_DB=has_db,
        RMS=bool(rms),
        SOFT_BF16=_soft_bf16(x),
        num_warps=num_warps,
    )
    dweight = torch.empty((N,), dtype=x.dtype, device=dev) if has_dw else None
    dbias = torch.empty((N,), dtype=x.dtype, device=dev) if has_db else None
    if has_dw or has_db:
        block_p, block_c = _REDUCE_BLOCK_P, _REDUCE_BLOCK_N
        if interpreting(x) and not force_gpu_configs() and triton.cdiv(N, block_c) > INTERP_MAX_PROGRAMS:
            # Interpreter launch-size exception (docs/triton-interpreter.md): wider column blocks.
            block_c = min(4096, triton.next_power_of_2(triton.cdiv(N, INTERP_MAX_PROGRAMS)))
        _norm_bwd_reduce_kernel[(triton.cdiv(N, block_c),)](
            part_dw if has_dw else part_db,
            part_db if has_db else part_dw,
            dweight if has_dw else dbias,
            dbias if has_db else dweight,
            P,
            N,
            BLOCK_P=block_p,
            BLOCK_N=block_c,
            HAS_DW=has_dw,
            HAS_DB=has_db,
            SOFT_BF16=_soft_bf16(x),
            num_warps=4,
        )
    return dx, dweight, dbias
