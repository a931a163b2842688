"""Cross-entropy over the last dimension of logits, fused and chunked.

``cross_entropy_ref`` is the fp32 reference (F.cross_entropy on upcast logits). ``tforge::cross_entropy``
is the custom op: one pass over each row gives its max and logsumexp (online softmax) and so the
exact loss ``logsumexp(row) - row[target]`` (no log-probabilities materialised; a target whose
probability underflows still gets its exact loss), and when a gradient will be needed the same pass
writes the logits' gradient ``(softmax(row) - onehot) * scale`` while the row is in cache
(scale = 1 / count for "mean", 1 for "sum"), in the logits' dtype. The backward then only multiplies
that saved gradient by the incoming scalar (nothing at all when it is 1). For reduction="none" the
forward saves per-row stats and ``tforge::cross_entropy_backward`` recomputes the gradient times each
row's incoming gradient. A row's logsumexp is kept as (max m, ls = log sum exp(x - m)) and x - lse
formed as (x - m) - ls, which stays exact in fp32 where m + ls would round (|logits| ~ 1e4).

Backends are the tables FORWARD / BACKWARD: torch (chunked reference math), cpu (C++, csrc/cpu),
cuda (csrc/cuda) and triton (tforge/triton/cross_entropy.py).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from tforge import _backend, _native
from tforge.ops import _dispatch

_REDUCTIONS = ("mean", "sum", "none")
_EMPTY = (0,)


def cross_entropy_ref(logits: Tensor, target: Tensor, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Reference: F.cross_entropy on fp32 logits (..., V) and targets (...); "mean" is 0 when every
    target is ignore_index (F.cross_entropy gives NaN there)."""
    v = logits.shape[-1]
    x = logits.reshape(-1, v).to(torch.promote_types(logits.dtype, torch.float32))
    t = target.reshape(-1).long()
    if reduction == "none":
        return F.cross_entropy(x, t, ignore_index=ignore_index, reduction="none").float().view(target.shape)
    total = F.cross_entropy(x, t, ignore_index=ignore_index, reduction="sum").float()
    if reduction == "sum":
        return total
    return total / (t != ignore_index).sum().clamp_min(1)


# ---------------------------------------------------------------- checks


def _name(t) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')} on {t.device}"


def check_args(logits, target, ignore_index, reduction) -> None:
    """ValueError naming what is wrong; metadata only, so it also runs on fake tensors."""
    op = "cross_entropy"
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError(f"{op}: logits must be a floating-point tensor (..., V), got {_name(logits)}")
    if logits.dim() == 0 or logits.shape[-1] < 1:
        raise ValueError(f"{op}: logits must have a class (last) dimension of size >= 1, got {_name(logits)}")
    if not isinstance(target, torch.Tensor) or target.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{op}: target must be an int64 (or int32) tensor of class indices, got {_name(target)}")
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"{op}: target must have the shape of logits without its last dimension "
                         f"{tuple(logits.shape[:-1])}, got {_name(target)}")
    if target.device != logits.device:
        raise ValueError(f"{op}: target is on {target.device} but logits are on {logits.device}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, torch.SymInt)):
        raise ValueError(f"{op}: ignore_index must be an int, got {ignore_index!r}")


def _count_and_check(t: Tensor, v: int, ignore_index: int) -> int:
    """Rows that count (target != ignore_index); ValueError if one of them is outside [0, v).
    One reduction and one host read (a sync on a GPU)."""
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= v))
    count, nbad = torch.stack((valid.sum(), bad.sum())).tolist()
    if nbad:
        first = int(t[bad][0])
        raise ValueError(f"cross_entropy: target values must be in [0, {v}) or ignore_index ({ignore_index}); "
                         f"{nbad} are not (e.g. {first})")
    return count


# ---------------------------------------------------------------- backends
# forward(x2, t, ignore_index, scale, want_grad, want_stats) -> (row_loss fp32 [N], grad [N, V] or None,
#   stats fp32 [2, N] (row max, log sum exp(x - max)) or None); x2 (N, V) with unit column stride,
#   t (N,) int64/int32 contiguous.
# backward(dloss fp32 [N], x2, t, stats, ignore_index) -> grad [N, V] = (softmax - onehot) * dloss per row.


def _chunk_rows(x2: Tensor) -> int:
    """About 1 Mi elements per chunk on CPU (the chunk and its fp32 temporaries stay in cache), 64 Mi on GPUs."""
    elems = 1 << 20 if x2.device.type == "cpu" else 1 << 26
    return max(1, elems // max(1, x2.shape[1]))


def _grad_chunk(x, m, ls, safe, sc):
    """(exp((x - m) - ls) - onehot(safe)) * sc for fp32 rows x (R, V); m, ls (R,), sc (R, 1)."""
    return x.sub(m[:, None]).sub_(ls[:, None]).exp_().mul_(sc).scatter_add_(1, safe[:, None], -sc)


def _fwd_torch(x2, t, ignore_index, scale, want_grad, want_stats):
    n = x2.shape[0]
    valid = t != ignore_index
    safe = torch.where(valid, t, 0).long()
    loss = torch.empty(n, dtype=torch.float32, device=x2.device)
    stats = torch.empty(2, n, dtype=torch.float32, device=x2.device)
    grad = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device) if want_grad else None
    step = _chunk_rows(x2)
    for s in range(0, n, step):
        e = min(n, s + step)
        x = x2[s:e].float()
        m = x.amax(-1)
        ls = (x - m[:, None]).exp_().sum(-1).log_()
        stats[0, s:e], stats[1, s:e] = m, ls
        loss[s:e] = torch.where(valid[s:e], (m - x.gather(1, safe[s:e, None])[:, 0]) + ls, 0.0)
        if want_grad:  # 0 on ignored rows
            grad[s:e] = _grad_chunk(x, m, ls, safe[s:e], (valid[s:e].float() * scale)[:, None])
    return loss, grad, stats if want_stats else None


def _bwd_torch(dloss, x2, t, stats, ignore_index):
    valid = t != ignore_index
    safe = torch.where(valid, t, 0).long()
    grad = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device)
    step = _chunk_rows(x2)
    for s in range(0, x2.shape[0], step):
        e = min(x2.shape[0], s + step)
        sc = torch.where(valid[s:e], dloss[s:e].float(), 0.0)[:, None]
        grad[s:e] = _grad_chunk(x2[s:e].float(), stats[0, s:e], stats[1, s:e], safe[s:e], sc)
    return grad


def _native_args(C, x2, t, ignore_index, **fields):
    return _native.Args(C.CrossEntropyArgs, logits=_native.Strided(x2), logits_stride=_native.row_stride(x2),
                        rows=x2.shape[0], cols=x2.shape[1], dtype=_native.dtype_code(x2), target=t,
                        target_int32=t.dtype == torch.int32, ignore_index=int(ignore_index), **fields)


def _fwd_outputs(x2, want_grad, want_stats):
    n = x2.shape[0]
    loss = torch.empty(n, dtype=torch.float32, device=x2.device)
    grad = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device) if want_grad else None
    stats = torch.empty(2, n, dtype=torch.float32, device=x2.device) if want_stats else None
    return loss, grad, stats


def _stats_fields(stats, out: bool) -> dict:
    wrap = _native.Out if out else (lambda t: t)
    if stats is None:
        return dict(row_max=None, row_logsum=None)
    return dict(row_max=wrap(stats[0]), row_logsum=wrap(stats[1]))


def _fwd_native(x2, t, ignore_index, scale, want_grad, want_stats, device_kind):
    C = _native.require()
    loss, grad, stats = _fwd_outputs(x2, want_grad, want_stats)
    args = _native_args(C, x2, t, ignore_index, loss=_native.Out(loss), grad=_native.Out(grad),
                        grad_scale=float(scale), **_stats_fields(stats, True))
    if device_kind == "cpu":
        _native.call(C.cross_entropy_fwd_cpu, args, threads=torch.get_num_threads())
    else:
        device, stream = _native.cuda_stream(x2)
        _native.call(C.cross_entropy_fwd_cuda, args, device=device, stream=stream)
    return loss, grad, stats


def _bwd_native(dloss, x2, t, stats, ignore_index, device_kind):
    C = _native.require()
    grad = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device)
    args = _native_args(C, x2, t, ignore_index, row_scale=dloss.float(), grad=_native.Out(grad),
                        **_stats_fields(stats, False))
    if device_kind == "cpu":
        _native.call(C.cross_entropy_bwd_cpu, args, threads=torch.get_num_threads())
    else:
        device, stream = _native.cuda_stream(x2)
        _native.call(C.cross_entropy_bwd_cuda, args, device=device, stream=stream)
    return grad


def _fwd_triton(x2, t, ignore_index, scale, want_grad, want_stats):
    from tforge.triton import cross_entropy as tce
    return tce.cross_entropy_fwd(x2, t, int(ignore_index), float(scale), want_grad, want_stats)


def _bwd_triton(dloss, x2, t, stats, ignore_index):
    from tforge.triton import cross_entropy as tce
    return tce.cross_entropy_bwd(dloss.float(), x2, t, stats, int(ignore_index))


FORWARD = {"torch": _fwd_torch, "cpu": functools.partial(_fwd_native, device_kind="cpu"),
           "cuda": functools.partial(_fwd_native, device_kind="cuda"), "triton": _fwd_triton}
BACKWARD = {"torch": _bwd_torch, "cpu": functools.partial(_bwd_native, device_kind="cpu"),
            "cuda": functools.partial(_bwd_native, device_kind="cuda"), "triton": _bwd_triton}


def _check_backend(logits: Tensor, backend: str) -> None:
    reason = _backend.why_unavailable(backend, logits.device, logits.dtype)
    if reason is not None:
        raise ValueError(f"cross_entropy: {reason}")


def _rows(logits: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    return _native.as_rows(logits, logits.shape[-1]), target.reshape(-1).contiguous()


# ---------------------------------------------------------------- custom ops


@_dispatch.custom_op("tforge::cross_entropy")
def _cross_entropy_op(logits: Tensor, target: Tensor, ignore_index: int, reduction: str, need_grad: bool,
                      backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (loss, saved gradient (mean/sum, need_grad) or empty, row stats [2, N] (none, need_grad) or empty)."""
    check_args(logits, target, ignore_index, reduction)
    _check_backend(logits, backend)
    x2, t = _rows(logits, target)
    count = _count_and_check(t, x2.shape[1], ignore_index)
    scale = 1.0 if reduction != "mean" else 1.0 / max(count, 1)
    want_grad = need_grad and reduction != "none"
    want_stats = need_grad and reduction == "none"
    loss, grad, stats = FORWARD[backend](x2, t, ignore_index, scale, want_grad, want_stats)
    if reduction == "none":
        out = loss.view(target.shape)
    else:
        out = loss.sum() * scale
    grad = grad.view(logits.shape) if grad is not None else logits.new_empty(_EMPTY)
    stats = stats if stats is not None else logits.new_empty(_EMPTY, dtype=torch.float32)
    return out, grad, stats


@_cross_entropy_op.register_fake
def _(logits, target, ignore_index, reduction, need_grad, backend):
    check_args(logits, target, ignore_index, reduction)
    loss = logits.new_empty(target.shape if reduction == "none" else (), dtype=torch.float32)
    grad = logits.new_empty(logits.shape if need_grad and reduction != "none" else _EMPTY)
    stats = (2, target.numel()) if need_grad and reduction == "none" else _EMPTY
    return loss, grad, logits.new_empty(stats, dtype=torch.float32)


@_dispatch.custom_op("tforge::cross_entropy_backward")
def _cross_entropy_backward_op(dloss: Tensor, logits: Tensor, target: Tensor, stats: Tensor, ignore_index: int,
                               backend: str) -> Tensor:
    """reduction="none": the logits' gradient recomputed from the saved row stats."""
    _check_backend(logits, backend)
    x2, t = _rows(logits, target)
    return BACKWARD[backend](dloss.reshape(-1).contiguous(), x2, t, stats, ignore_index).view(logits.shape)


@_cross_entropy_backward_op.register_fake
def _(dloss, logits, target, stats, ignore_index, backend):
    return logits.new_empty(logits.shape)


def _setup_context(ctx, inputs, output):
    logits, target, ignore_index, reduction, need_grad, backend = inputs
    ctx.reduction, ctx.ignore_index, ctx.backend, ctx.fused = reduction, ignore_index, backend, need_grad
    ctx.mark_non_differentiable(output[1], output[2])  # the saved gradient goes back as is: no graph on it
    ctx.set_materialize_grads(False)  # else autograd zero-fills a logits-sized gradient for output[1]
    if reduction == "none":
        ctx.save_for_backward(logits, target, output[2])
    elif need_grad:
        ctx.save_for_backward(output[1])
    else:  # called with need_grad=False on logits that require grad: the backward recomputes
        ctx.save_for_backward(logits, target)


def _backward(ctx, dloss, _dgrad, _dstats):
    if dloss is None:  # (grads are not materialised: see _setup_context)
        return None, None, None, None, None, None
    if ctx.reduction == "none":
        logits, target, stats = ctx.saved_tensors
        if not ctx.fused:
            stats = _cross_entropy_op(logits, target, ctx.ignore_index, "none", True, ctx.backend)[2]
        dx = _cross_entropy_backward_op(dloss, logits, target, stats, ctx.ignore_index, ctx.backend)
    else:
        if ctx.fused:
            (grad,) = ctx.saved_tensors
        else:
            logits, target = ctx.saved_tensors
            grad = _cross_entropy_op(logits, target, ctx.ignore_index, ctx.reduction, True, ctx.backend)[1]
        # The saved gradient is final when the incoming one is 1 (loss.backward()); reading it is free on
        # the CPU, a sync on a GPU, and data-dependent under tracing, so only eager CPU skips the multiply.
        one = (type(dloss) is torch.Tensor and dloss.device.type == "cpu" and not torch.compiler.is_compiling()
               and _get_current_dispatch_mode() is None and float(dloss) == 1.0)
        dx = grad if one else grad * dloss
    return dx, None, None, None, None, None


_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -100, reduction: str = "mean", *,
                  backend: Optional[str] = None) -> Tensor:
    """Cross-entropy of logits (..., V) (fp32, bf16 or fp16) against class indices target (...) (int64 or
    int32), computed in fp32 and returned as fp32 whatever the logits' dtype.

    reduction "mean": sum over rows with target != ignore_index of (logsumexp(row) - row[target]), divided
    by their count; **0 (not NaN, unlike F.cross_entropy) when every target is ignored**. "sum": the sum.
    "none": the per-row losses shaped like target, 0 at ignored rows. A target outside [0, V) that is not
    ignore_index raises ValueError (checking it reads one number back: a sync on a GPU). NaN logits give
    NaN losses. Differentiable in logits; the gradient has the logits' dtype.
    """
    check_args(logits, target, ignore_index, reduction)
    name = _backend.resolve(logits.device, logits.dtype, backend, impls=FORWARD)
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    return _dispatch.call(_cross_entropy_op, logits, target, int(ignore_index), reduction, need_grad, name)[0]
