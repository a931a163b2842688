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

The kernels live in _norm_fwd and _norm_bwd (the bf16-safe conversion _to_out, which every kernel module
uses, in _rounding; re-exported here); this module holds the launchers and their tile choices and looks
the kernels up in its own namespace when it launches them.
"""

import torch
import triton

from ._common import INTERP_MAX_PROGRAMS, force_gpu_configs, interpreting, sm_count
from ._norm_bwd import _norm_bwd_dx_kernel, _norm_bwd_reduce_kernel
from ._norm_fwd import _norm_fwd_kernel
from ._rounding import _to_out  # noqa: F401  (int8.py and sparse24.py import it from here)

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
