"""n:m structured and unstructured pruning masks: pruning scores (magnitude, Wanda), the n:m mask (in each
group of m consecutive input columns keep the n largest scores, as 2:4 sparsity needs for
tforge.ops.sparse24) and the unstructured mask.

Reference: ``nm_mask_ref`` (sort-based). Custom op: ``tforge::nm_mask`` (no autograd: a mask is a choice).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from tforge import _backend, _native
from tforge.ops import _dispatch

_MAX_M = 16  # the native mask kernels take 1 <= n <= m <= 16


# ---------------------------------------------------------------- scores and masks (references)

def prune_scores(weight: Tensor, method: str = "magnitude", act_norm: Optional[Tensor] = None) -> Tensor:
    """Importance of each weight, fp32, shaped like `weight` (out, in): |W| ("magnitude") or
    |W| * act_norm[None, :] ("wanda", act_norm = per-input-channel L2 norm of the layer's input)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not (weight.is_floating_point()
                                                                         or weight.dtype == torch.int8):
        raise ValueError(f"prune_scores: weight must be a 2-D (out_features, in_features) float tensor, got "
                         f"{getattr(weight, 'dtype', type(weight).__name__)} {tuple(getattr(weight, 'shape', ()))}")
    scores = weight.detach().float().abs()
    if method == "magnitude":
        if act_norm is not None:
            raise ValueError("prune_scores: act_norm is only used by method='wanda'")
        return scores
    if method != "wanda":
        raise ValueError(f"prune_scores: method must be 'magnitude' or 'wanda', got {method!r}")
    if act_norm is None:
        raise ValueError("prune_scores: method='wanda' needs act_norm (the input's per-channel L2 norms)")
    if not isinstance(act_norm, torch.Tensor) or tuple(act_norm.shape) != (weight.shape[1],):
        raise ValueError(f"prune_scores: act_norm must have shape ({weight.shape[1]},) (one per input channel), "
                         f"got {tuple(getattr(act_norm, 'shape', ()))}")
    return scores * act_norm.detach().float().to(scores.device)[None, :]


def _check_nm(op: str, n: int, m: int) -> None:
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int) \
            or not 1 <= n <= m <= _MAX_M:
        raise ValueError(f"{op}: need integers 1 <= n <= m <= {_MAX_M}, got n={n!r}, m={m!r}")


def _check_scores(op: str, scores: Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise ValueError(f"{op}: scores must be a floating-point tensor, got "
                         f"{getattr(scores, 'dtype', type(scores).__name__)}")
    if scores.dim() == 0:
        raise ValueError(f"{op}: scores must have at least one dimension (the input dimension), got a scalar")
    # A data-dependent check: skipped while tracing (torch.compile), where it would break the graph.
    if not torch.compiler.is_compiling() and scores.numel() and bool(torch.isnan(scores).any()):
        first = torch.isnan(scores.reshape(-1, scores.shape[-1])).nonzero()[0].tolist()
        raise ValueError(f"{op}: scores contain NaN (first at row {first[0]}, column {first[1]}); "
                         "a NaN score has no rank")


def nm_mask_ref(scores: Tensor, n: int = 2, m: int = 4) -> Tensor:
    """Sort-based reference: in every group of m consecutive entries of the last dim keep the n largest;
    equal scores keep the lower index (a stable descending sort keeps their order)."""
    k = scores.shape[-1]
    groups = scores.reshape(*scores.shape[:-1], k // m, m)  # (not -1: ambiguous when K = 0)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(-1, order[..., :n], True)
    return mask.reshape(scores.shape)


def unstructured_mask(scores: Tensor, sparsity: float, per_row: bool = True) -> Tensor:
    """Keep the largest scores, pruning exactly floor(sparsity * count) entries per row of the last dim
    (per_row=True, as Wanda compares weights of one output) or over the whole tensor. Ties keep the
    lower (flattened) index."""
    _check_scores("unstructured_mask", scores)
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"unstructured_mask: sparsity must be a number in [0, 1), got {sparsity!r}")
    flat = scores.reshape(math.prod(scores.shape[:-1]), scores.shape[-1]) if per_row else scores.reshape(1, -1)
    count = flat.shape[1]
    prune = math.floor(sparsity * count + 1e-9)  # 1e-9: 0.3 * 10 is 2.9999999999999996 in binary
    order = torch.sort(flat, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(-1, order[:, : count - prune], True)
    return mask.reshape(scores.shape)


# ---------------------------------------------------------------- backends

def _mask_reason(name: str) -> Optional[str]:
    entry = {"cpu": "nm_mask_cpu", "cuda": "nm_mask_cuda"}.get(name)
    if entry is not None and not hasattr(_native.require(), entry):
        return f"backend {name!r} has no n:m mask kernel in this build of tforge._C"
    return None


def _mask_args(s2, n, m):
    """The mask, allocated, and the NMMaskArgs that fill it."""
    mask = torch.empty(s2.shape, dtype=torch.bool, device=s2.device)
    return mask, _native.Args(_native.require().NMMaskArgs, scores=_native.Strided(s2), s_stride=_native.row_stride(s2),
                              rows=s2.shape[0], cols=s2.shape[1], dtype=_native.dtype_code(s2), n=n, m=m,
                              mask=_native.Out(mask))


def _nm_mask_cpu(s2, n, m):
    mask, args = _mask_args(s2, n, m)
    _native.call(_native.require().nm_mask_cpu, args, threads=torch.get_num_threads())
    return mask


def _nm_mask_cuda(s2, n, m):
    mask, args = _mask_args(s2, n, m)
    device, stream = _native.cuda_stream(s2)
    _native.call(_native.require().nm_mask_cuda, args, device=device, stream=stream)
    return mask


def _nm_mask_triton(s2, n, m):
    from tforge.triton import sparse24 as tsp
    mask = torch.empty(s2.shape, dtype=torch.bool, device=s2.device)
    tsp.nm_mask(s2, n, m, mask)
    return mask


# nm_mask on each backend: (scores (rows, K) with K % m == 0, n, m) -> bool mask (rows, K).
NM_MASK = {"torch": nm_mask_ref, "cpu": _nm_mask_cpu, "cuda": _nm_mask_cuda, "triton": _nm_mask_triton}


# ---------------------------------------------------------------- custom op

@_dispatch.custom_op("tforge::nm_mask")
def _nm_mask_op(scores: Tensor, n: int, m: int, backend: str) -> Tensor:
    s2 = _native.as_rows(scores, scores.shape[-1])
    if s2.numel() == 0:  # no rows, or K = 0: nothing to choose
        return torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
    return NM_MASK[backend](s2, n, m).reshape(scores.shape)


@_nm_mask_op.register_fake
def _(scores, n, m, backend):
    return scores.new_empty(scores.shape, dtype=torch.bool)


# ---------------------------------------------------------------- public API

def nm_mask(scores: Tensor, n: int = 2, m: int = 4, *, backend: Optional[str] = None) -> Tensor:
    """Bool mask shaped like `scores` (last dim = the input dim) keeping, in every group of m consecutive
    entries, the n largest scores; among equal scores the lower index is kept. NaN scores are rejected."""
    _check_nm("nm_mask", n, m)
    _check_scores("nm_mask", scores)
    k = scores.shape[-1]
    if k % m != 0:
        raise ValueError(f"nm_mask: the last dimension of scores ({k}, the input features) is not a multiple of "
                         f"m = {m}; n:m sparsity needs whole groups of {m}")
    name = _backend.resolve(scores.device, scores.dtype, backend, supports=_mask_reason, impls=NM_MASK)
    return _dispatch.call(_nm_mask_op, scores, n, m, name)
