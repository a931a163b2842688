"""Triton cross-entropy: forward (loss, optional fused gradient and row stats) and the backward of
reduction="none" (gradient recomputed from the saved row stats).

One program per row. The forward walks the row in BLOCK_V chunks keeping a running max and a running
sum of exp(x - max) (online softmax), so the row is read once for its max m and ls = log(sum): the
loss is (m - x[target]) + ls (exact even when softmax[target] underflows, and where m + ls would round).
With WRITE_GRAD a second walk writes (exp((x - m) - ls) - onehot) * scale in the logits' dtype while the
row is still in L2. Ignored rows read
nothing and write zeros. The same launch on a GPU and under TRITON_INTERPRET=1 (bf16 rounding by hand
there, as in norm.py). Launchers trust the caller (the ops layer validates).
"""

import torch
import triton
import triton.language as tl

from ._common import interpreting
from .norm import _to_out

_MAX_BLOCK_V = 4096  # columns per step: 16 KiB of fp32 per program, in registers across the warps


@triton.jit
def _grad_row(X, G, row, V, stride_x, m, ls, target, scale, BLOCK_V: tl.constexpr, SOFT_BF16: tl.constexpr):
    """G[row, :] = (exp((X[row, :] - m) - ls) - onehot(target)) * scale, in G's dtype."""
    x_row = X + row.to(tl.int64) * stride_x
    g_row = G + row.to(tl.int64) * V
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        g = (tl.exp((x - m) - ls) - tl.where(cols == target, 1.0, 0.0)) * scale
        tl.store(g_row + cols, _to_out(g, G.dtype.element_ty, SOFT_BF16), mask=mask)


@triton.jit
def _zero_row(G, row, V, BLOCK_V: tl.constexpr):
    g_row = G + row.to(tl.int64) * V
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        tl.store(g_row + cols, tl.zeros((BLOCK_V,), dtype=G.dtype.element_ty), mask=cols < V)


@triton.jit
def _ce_fwd_kernel(
    X,  # (N, V), row stride stride_x, unit column stride
    T,  # (N,) int64 or int32
    LOSS,  # (N,) fp32
    STATS,  # (2, N) fp32: row max, log sum exp(x - max) (written only when WRITE_STATS)
    G,  # (N, V) contiguous, X's dtype (written only when WRITE_GRAD)
    N,
    V,
    stride_x,
    ignore_index,
    scale,
    BLOCK_V: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    WRITE_STATS: tl.constexpr,
    SOFT_BF16: tl.constexpr,
):
    row = tl.program_id(0)
    target = tl.load(T + row).to(tl.int64)
    if target == ignore_index:
        tl.store(LOSS + row, 0.0)
        if WRITE_STATS:
            tl.store(STATS + row, 0.0)
            tl.store(STATS + N + row, 0.0)
        if WRITE_GRAD:
            _zero_row(G, row, V, BLOCK_V)
    else:
        x_row = X + row.to(tl.int64) * stride_x
        m = -float("inf")
        s = 0.0
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            x = tl.load(x_row + cols, mask=cols < V, other=-float("inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, 0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
            m = m_new
        ls = tl.log(s)
        x_t = tl.load(x_row + target).to(tl.float32)
        tl.store(LOSS + row, (m - x_t) + ls)
        if WRITE_STATS:
            tl.store(STATS + row, m)
            tl.store(STATS + N + row, ls)
        if WRITE_GRAD:
            _grad_row(X, G, row, V, stride_x, m, ls, target, scale, BLOCK_V, SOFT_BF16)


@triton.jit
def _ce_bwd_kernel(
    X,  # (N, V), row stride stride_x
    T,  # (N,) int64 or int32
    STATS,  # (2, N) fp32: row max, log sum exp(x - max)
    DLOSS,  # (N,) fp32: each row's incoming gradient
    G,  # (N, V) contiguous, X's dtype
    N,
    V,
    stride_x,
    ignore_index,
    BLOCK_V: tl.constexpr,
    SOFT_BF16: tl.constexpr,
):
    row = tl.program_id(0)
    target = tl.load(T + row).to(tl.int64)
    if target == ignore_index:
        _zero_row(G, row, V, BLOCK_V)
    else:
        m, ls = tl.load(STATS + row), tl.load(STATS + N + row)
        _grad_row(X, G, row, V, stride_x, m, ls, target, tl.load(DLOSS + row), BLOCK_V, SOFT_BF16)


def _config(v: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps): the whole row in one step up to _MAX_BLOCK_V, 8 to 16 elements per thread."""
    block = min(triton.next_power_of_2(v), _MAX_BLOCK_V)
    return block, max(1, min(16, block // 256))


def _soft_bf16(x):
    return x.dtype == torch.bfloat16 and interpreting(x)


def cross_entropy_fwd(x, t, ignore_index: int, scale: float, want_grad: bool, want_stats: bool):
    """x (N, V) with unit column stride, t (N,) contiguous int64/int32 -> (loss fp32 (N,), grad (N, V) in
    x.dtype or None, stats fp32 (2, N) or None)."""
    n, v = x.shape
    assert x.stride(1) == 1 or v == 1, "cross_entropy_fwd: logits need unit column stride"
    loss = torch.empty(n, dtype=torch.float32, device=x.device)
    stats = torch.empty((2, n), dtype=torch.float32, device=x.device) if want_stats else loss
    grad = torch.empty((n, v), dtype=x.dtype, device=x.device) if want_grad else x
    if n:
        block, warps = _config(v)
        _ce_fwd_kernel[(n,)](x, t, loss, stats, grad, n, v, x.stride(0), ignore_index, scale, BLOCK_V=block,
                             WRITE_GRAD=want_grad, WRITE_STATS=want_stats, SOFT_BF16=_soft_bf16(x), num_warps=warps)
    return loss, grad if want_grad else None, stats if want_stats else None


def cross_entropy_bwd(dloss, x, t, stats, ignore_index: int):
    """(softmax(x) - onehot(t)) * dloss per row, 0 on ignored rows; (N, V) in x.dtype."""
    n, v = x.shape
    assert x.stride(1) == 1 or v == 1, "cross_entropy_bwd: logits need unit column stride"
    grad = torch.empty((n, v), dtype=x.dtype, device=x.device)
    if n:
        block, warps = _config(v)
        _ce_bwd_kernel[(n,)](x, t, stats.contiguous(), dloss, grad, n, v, x.stride(0), ignore_index, BLOCK_V=block,
                             SOFT_BF16=_soft_bf16(x), num_warps=warps)
    return grad
