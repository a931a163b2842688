"""Argument checks of tforge.attention / attention_varlen (metadata only, plus the
cu_seqlens values on CPU), and the limits that clamp windows and max_seqlen into
the range the kernels' int64 arithmetic handles. Errors are one-line ValueErrors
naming the argument."""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from tforge import _native

# Kernels' head_dim limits per backend; CUDA serves what tforge._C reports.
MAX_HEAD_DIM = {"cpu": 256, "triton": 256, "torch": None}
INT64_MAX = 2 ** 63 - 1


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def head_dim_reason(name: str, head_dim: int, dtype: torch.dtype) -> Optional[str]:
    entry = {"cpu": "attention_fwd_cpu", "cuda": "attention_fwd_cuda"}.get(name)
    if entry is not None and not hasattr(_native.require(), entry):
        return f"backend {name!r} has no attention kernels in this build of tforge._C"
    if name == "cuda":
        C = _native.require()
        if not C.attention_cuda_supported(head_dim, _native.DTYPE_CODES.get(dtype, -1)):
            return (f"backend 'cuda' attention serves head_dim {C.attention_cuda_head_dims()} in bf16/fp16, "
                    f"got head_dim {head_dim} in {str(dtype).replace('torch.', '')}")
        return None
    limit = MAX_HEAD_DIM.get(name)
    if limit is not None and head_dim > limit:
        return f"backend {name!r} attention serves head_dim up to {limit}, got {head_dim}"
    return None


def check(op: str, q: Tensor, k: Tensor, v: Tensor, varlen: bool, attn_bias: Optional[Tensor],
          window: Optional[Tuple[int, int]], softmax_scale: Optional[float]) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        want = 3 if varlen else 4
        if t.dim() != want:
            layout = "(total_tokens, heads, head_dim)" if varlen else "(batch, seqlen, heads, head_dim)"
            raise ValueError(f"{op}: {name} must be {want}-D {layout}, got shape {tuple(t.shape)}")
    if not q.is_floating_point():
        raise ValueError(f"{op}: q must be floating point, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{op}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"{op}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"{op}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if not varlen and k.shape[0] != q.shape[0]:
        raise ValueError(f"{op}: q and k must have the same batch size, got {q.shape[0]} and {k.shape[0]}")
    hq, hk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"{op}: q and k must have the same head_dim, got {d} and {k.shape[-1]}")
    if d < 1:
        raise ValueError(f"{op}: head_dim (the last dimension of q, k, v) must be >= 1, got {d}")
    if hq < 1 or hk < 1 or hq % hk != 0:
        raise ValueError(f"{op}: heads of q ({hq}) must be a positive multiple of heads of k/v ({hk})")
    if window is not None:
        if (not isinstance(window, (tuple, list)) or len(window) != 2
                or not all(_is_int(w) and -1 <= w <= INT64_MAX for w in window)):
            raise ValueError(f"{op}: window must be (left, right) ints in [-1, 2**63 - 1] (-1: unbounded), "
                             f"got {window!r}")
    scale_ok = isinstance(softmax_scale, (int, float)) and not isinstance(softmax_scale, bool)
    if softmax_scale is not None and not (scale_ok and math.isfinite(softmax_scale)):
        raise ValueError(f"{op}: softmax_scale must be a finite number or None, got {softmax_scale!r}")
    if attn_bias is not None:
        if not isinstance(attn_bias, torch.Tensor) or not attn_bias.is_floating_point():
            raise ValueError(f"{op}: attn_bias must be a floating-point tensor")
        if attn_bias.device != q.device:
            raise ValueError(f"{op}: attn_bias is on {attn_bias.device} but q is on {q.device}")
        target = (q.shape[0], hq, q.shape[1], k.shape[1])
        try:
            ok = attn_bias.dim() <= 4 and torch.broadcast_shapes(attn_bias.shape, target) == target
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{op}: attn_bias of shape {tuple(attn_bias.shape)} does not broadcast to "
                             f"(batch, heads_q, seqlen_q, seqlen_k) = {target}")
        if attn_bias.requires_grad:
            raise ValueError(f"{op}: no gradient flows to attn_bias; pass attn_bias.detach()")


def check_cu_seqlens(op: str, q: Tensor, k: Tensor, cu_q: Tensor, cu_k: Tensor, max_q: int, max_k: int):
    for name, cu, total, mx in (("cu_seqlens_q", cu_q, q.shape[0], max_q), ("cu_seqlens_k", cu_k, k.shape[0], max_k)):
        if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.dim() != 1 or cu.numel() < 1:
            raise ValueError(f"{op}: {name} must be a 1-D int32 tensor of batch + 1 offsets, got "
                             f"{getattr(cu, 'dtype', type(cu))} {tuple(getattr(cu, 'shape', ()))}")
        if cu.device != q.device:
            raise ValueError(f"{op}: {name} is on {cu.device} but q is on {q.device}")
        if not _is_int(mx) or not 0 <= mx <= INT64_MAX:
            raise ValueError(f"{op}: max_seqlen for {name} must be an int in [0, 2**63 - 1], got {mx!r}")
        # Contents are checked eagerly on CPU only: cheap there. On GPU (no sync) the CUDA kernels clamp
        # each sequence to the tensors and max_seqlen and rows outside every sequence stay zero (as in
        # Triton); under torch.compile the values are not known while tracing. (The native layer gets a
        # contiguous copy of what is checked here: _native.call.)
        if cu.device.type == "cpu" and not isinstance(cu, torch._subclasses.FakeTensor) \
                and not torch.compiler.is_compiling():
            vals = cu.tolist()
            lens = [b - a for a, b in zip(vals, vals[1:])]
            if vals[0] != 0 or any(n < 0 for n in lens) or vals[-1] != total:
                raise ValueError(f"{op}: {name} must start at 0, not decrease and end at the token count "
                                 f"{total}; got {vals[:8]}{'...' if len(vals) > 8 else ''}")
            if lens and max(lens) > mx:
                raise ValueError(f"{op}: a sequence of {max(lens)} tokens exceeds max_seqlen {mx} ({name})")
    if cu_q.numel() != cu_k.numel():
        raise ValueError(f"{op}: cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1), got "
                         f"{cu_q.numel()} and {cu_k.numel()}")


def clamp_window(window: Optional[Tuple[int, int]], sq: int, sk: int) -> Tuple[int, int]:
    """(left, right) with -1 for unbounded, each side clamped to sq + sk: wider windows see the same keys,
    and the kernels' index arithmetic (i + offset -/+ window, in int64) cannot overflow."""
    if window is None:
        return (-1, -1)
    return tuple(w if w < 0 else min(w, sq + sk) for w in window)
