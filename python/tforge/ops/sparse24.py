"""2:4 structured sparsity: the packed 2:4 weight format, and the sparse linear y = x @ W^T + bias that
reads only the kept weights. The masks that choose the weights to keep are in tforge.ops._sparse24_masks.

Packed format (also in csrc/common/sparse24_args.h): a weight W (N, K) in nn.Linear's layout
with K % 4 == 0 and at most 2 non-zeros in each group of 4 consecutive columns becomes
  values (N, K/2), W's dtype (or int8 with a per-row fp32 ``scale``): the two kept entries of each group,
         in increasing column order;
  meta   (N, ceil(K/8)) uint8: one nibble per group g (byte g // 2, low nibble for even g),
         nibble = i0 | i1 << 2 with i0 < i1 the in-group positions of the two values. Groups with fewer
         than 2 non-zeros fill the spare slots with the lowest unused positions (value 0).
Weight-only int8 2:4: values int8, scale (N,) fp32, y = (x @ Wq^T) * scale + bias.
Reference: ``sparse24_ref`` (unpack, dense matmul in fp32, cast back). Custom op: ``tforge::sparse24_linear``
(autograd for x and bias; the packed weight is a constant: train through tforge.nn.SparseLinear's
dense-weight-with-mask form instead).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch
from torch import Tensor

from tforge import _backend, _native
from tforge.ops import _dispatch
# The masks that choose the kept weights (part of the 2:4 op family: tested in test_sparse24.py, timed in
# bench_sparse24.py), public from here.
from tforge.ops._sparse24_masks import nm_mask, nm_mask_ref, prune_scores, unstructured_mask  # noqa: F401

INT8_CODE = 3  # values dtype code for int8 weights (beside _native.DTYPE_CODES' 0..2)
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_VALUE_DTYPES = _FLOAT_DTYPES + (torch.int8,)


# ---------------------------------------------------------------- the packed weight

@dataclasses.dataclass
class Sparse24Weight:
    """A packed 2:4 weight of logical shape (N, K): ``values`` (N, K/2), ``meta`` (N, ceil(K/8)) uint8,
    ``scale`` None or fp32 (N,) (required when values are int8)."""
    values: Tensor
    meta: Tensor
    shape: Tuple[int, int]
    scale: Optional[Tensor] = None

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nbytes(self) -> int:
        """Bytes held by values + meta (+ scale): what a kernel streams instead of the dense weight."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.meta, self.scale) if t is not None)

    def to(self, device=None, dtype: Optional[torch.dtype] = None, non_blocking: bool = False) -> "Sparse24Weight":
        """Move to `device`; `dtype` converts float values (int8 values keep their dtype and scale)."""
        values = self.values.to(device=device, non_blocking=non_blocking)
        if dtype is not None:
            if self.values.dtype == torch.int8 or dtype not in _FLOAT_DTYPES:
                raise ValueError(f"Sparse24Weight.to: can only convert float values to float32/bfloat16/float16, "
                                 f"got values {self.values.dtype} -> {dtype}")
            values = values.to(dtype)
        scale = self.scale.to(device=device, non_blocking=non_blocking) if self.scale is not None else None
        return Sparse24Weight(values, self.meta.to(device=device, non_blocking=non_blocking), tuple(self.shape), scale)

    def cpu(self) -> "Sparse24Weight":
        return self.to("cpu")

    def cuda(self, device=None) -> "Sparse24Weight":
        if isinstance(device, int):
            device = torch.device("cuda", device)
        return self.to(device if device is not None else torch.device("cuda"))


def meta_cols(k: int) -> int:
    """Bytes of metadata per row for K columns: one nibble per group of 4."""
    return (k // 4 + 1) // 2


def _check_packed(op: str, packed) -> Tuple[int, int]:
    """Validate a Sparse24Weight's tensors against its shape; returns (N, K). Metadata only."""
    if not isinstance(packed, Sparse24Weight):
        raise ValueError(f"{op}: packed must be a Sparse24Weight (from pack_2to4), got {type(packed).__name__}")
    try:
        n, k = (int(s) for s in packed.shape)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: packed.shape must be (N, K), got {packed.shape!r}") from None
    if k <= 0 or k % 4 != 0 or n < 0:
        raise ValueError(f"{op}: packed.shape (N, K) = {(n, k)} needs K a positive multiple of 4")
    v, meta, scale = packed.values, packed.meta, packed.scale
    if not isinstance(v, torch.Tensor) or v.dtype not in _VALUE_DTYPES or tuple(v.shape) != (n, k // 2):
        raise ValueError(f"{op}: packed.values must be a float32/bfloat16/float16/int8 tensor of shape "
                         f"{(n, k // 2)}, got {getattr(v, 'dtype', type(v).__name__)} {tuple(getattr(v, 'shape', ()))}")
    if not isinstance(meta, torch.Tensor) or meta.dtype != torch.uint8 or tuple(meta.shape) != (n, meta_cols(k)):
        raise ValueError(f"{op}: packed.meta must be a uint8 tensor of shape {(n, meta_cols(k))}, got "
                         f"{getattr(meta, 'dtype', type(meta).__name__)} {tuple(getattr(meta, 'shape', ()))}")
    if meta.device != v.device:
        raise ValueError(f"{op}: packed.meta is on {meta.device} but packed.values is on {v.device}")
    if scale is not None:
        if v.dtype != torch.int8:  # every backend: a scale belongs to int8 values only (pack_2to4's rule)
            raise ValueError(f"{op}: packed.scale is only for int8 values, got {v.dtype} values with a scale")
        if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32 or tuple(scale.shape) != (n,):
            raise ValueError(f"{op}: packed.scale must be None or a float32 tensor of shape ({n},), got "
                             f"{getattr(scale, 'dtype', type(scale).__name__)} {tuple(getattr(scale, 'shape', ()))}")
        if scale.device != v.device:
            raise ValueError(f"{op}: packed.scale is on {scale.device} but packed.values is on {v.device}")
    return n, k


# ---------------------------------------------------------------- scores and masks (references)

# ---------------------------------------------------------------- pack / unpack

def pack_2to4(weight: Tensor, scale: Optional[Tensor] = None) -> Sparse24Weight:
    """Pack a 2:4-sparse weight (N, K) into a Sparse24Weight (vectorised torch, on weight's device).
    Raises ValueError naming the first (row, group) holding more than 2 non-zeros. int8 weights may
    carry their per-row fp32 `scale` (N,) (weight-only int8 2:4)."""
    op = "pack_2to4"
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.dtype not in _VALUE_DTYPES:
        raise ValueError(f"{op}: weight must be a 2-D (out_features, in_features) float32/bfloat16/float16/int8 "
                         f"tensor, got {getattr(weight, 'dtype', type(weight).__name__)} "
                         f"{tuple(getattr(weight, 'shape', ()))}")
    n, k = weight.shape
    if k == 0 or k % 4 != 0:
        raise ValueError(f"{op}: in_features K = {k} must be a positive multiple of 4 (groups of 4 columns)")
    if scale is not None:
        if weight.dtype != torch.int8:
            raise ValueError(f"{op}: scale is only for int8 weights, got a {weight.dtype} weight")
        if not isinstance(scale, torch.Tensor) or tuple(scale.shape) != (n,) or scale.device != weight.device:
            raise ValueError(f"{op}: scale must have shape ({n},) on {weight.device}, got "
                             f"{tuple(getattr(scale, 'shape', ()))} on {getattr(scale, 'device', None)}")
        scale = scale.detach().float().contiguous()
    w = weight.detach()
    groups = w.reshape(n, k // 4, 4)
    nonzero = groups != 0
    counts = nonzero.sum(-1)
    if not torch.compiler.is_compiling():
        bad = counts > 2
        if bool(bad.any()):
            row, group = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{op}: weight is not 2:4 sparse: row {row}, group {group} (columns {4 * group}.."
                             f"{4 * group + 3}) has {int(counts[row, group])} non-zeros, at most 2 allowed "
                             f"({int(bad.sum())} such groups in all); prune it first (nm_mask)")
    # Non-zeros first, in position order, then the unused positions in order: the two smallest keys.
    pos = torch.arange(4, device=w.device, dtype=torch.uint8)
    key = torch.where(nonzero, pos, pos + 4)
    chosen = torch.sort(key, dim=-1).values[..., :2] % 4
    i0 = torch.minimum(chosen[..., 0], chosen[..., 1])
    i1 = torch.maximum(chosen[..., 0], chosen[..., 1])
    values = torch.gather(groups, -1, torch.stack([i0, i1], -1).long()).reshape(n, k // 2).contiguous()
    nibbles = i0 | (i1 << 2)  # (N, K/4) uint8
    if nibbles.shape[1] % 2:
        nibbles = torch.nn.functional.pad(nibbles, (0, 1))
    meta = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).contiguous()
    return Sparse24Weight(values, meta, (n, k), scale)


def _positions(meta: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """(i0, i1) int64 (N, K/4) from the metadata bytes."""
    nib = torch.stack([meta & 0xF, meta >> 4], -1).reshape(meta.shape[0], 2 * meta.shape[1])[:, : k // 4]
    return (nib & 3).long(), ((nib >> 2) & 3).long()


def _scatter_dense(values: Tensor, meta: Tensor, k: int) -> Tensor:
    """Dense (N, K) in values' dtype; no checks (also traced inside the backward graph)."""
    n = values.shape[0]
    i0, i1 = _positions(meta, k)
    dense = torch.zeros(n, k // 4, 4, dtype=values.dtype, device=values.device)
    dense.scatter_(-1, torch.stack([i0, i1], -1), values.reshape(n, k // 4, 2))
    return dense.reshape(n, k)


def unpack_2to4(packed: Sparse24Weight, dequantize: bool = False,
                dtype: Optional[torch.dtype] = None) -> Tensor:
    """The dense (N, K) weight of `packed`, in the values' dtype (or `dtype`). dequantize=True (int8
    values with a scale): values * scale[:, None] in `dtype` (default fp32)."""
    n, k = _check_packed("unpack_2to4", packed)
    if not torch.compiler.is_compiling() and n:
        i0, i1 = _positions(packed.meta, k)
        bad = i0 >= i1
        if bool(bad.any()):
            row, group = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"unpack_2to4: corrupt meta: row {row}, group {group} has positions "
                             f"({int(i0[row, group])}, {int(i1[row, group])}), need i0 < i1")
    values = packed.values
    if dequantize and packed.scale is not None:
        values = (values.float() * packed.scale[:, None]).to(dtype or torch.float32)
    elif dtype is not None:
        values = values.to(dtype)
    return _scatter_dense(values, packed.meta, k)


def _dense_weight(values: Tensor, meta: Tensor, scale: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """Dense (N, K) weight in `dtype`, int8 values dequantised with scale (no checks)."""
    if scale is not None:
        values = values.float() * scale.float()[:, None]
    return _scatter_dense(values.to(dtype), meta, 2 * values.shape[1])


def sparse24_ref(x: Tensor, packed: Sparse24Weight, bias: Optional[Tensor] = None) -> Tensor:
    """Reference: unpack, x @ W^T in fp32 (int8: times scale), + bias, cast to x's dtype."""
    n, k = packed.shape
    w = _scatter_dense(packed.values.float(), packed.meta, k)
    acc = x.reshape(-1, k).float() @ w.T
    if packed.scale is not None:
        acc = acc * packed.scale.float()[None, :]
    if bias is not None:
        acc = acc + bias.float()
    return acc.to(x.dtype).reshape(*x.shape[:-1], n)


# ---------------------------------------------------------------- backends

def _linear_reason(name: str, device: torch.device, values_dtype: torch.dtype) -> Optional[str]:
    entry = {"cpu": "sparse24_linear_cpu", "cuda": "sparse24_linear_cuda"}.get(name)
    if entry is not None and not hasattr(_native.require(), entry):
        return f"backend {name!r} has no 2:4 sparse kernels in this build of tforge._C"
    if name == "cuda" and values_dtype in (torch.float32, torch.int8):
        return f"backend 'cuda' runs 2:4 sparse GEMMs on bfloat16/float16 values (mma.sp), got {values_dtype}"
    return None


def _values_code(values: Tensor) -> int:
    return INT8_CODE if values.dtype == torch.int8 else _native.DTYPE_CODES[values.dtype]


def _linear_args(x2, values, meta, scale, bias32):
    """The output y (M, N), allocated, and the Sparse24LinearArgs that fill it."""
    (m, k), n = x2.shape, values.shape[0]
    y = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    return y, _native.Args(_native.require().Sparse24LinearArgs, x=_native.Strided(x2), x_stride=_native.row_stride(x2),
                           values=values, meta=meta, M=m, N=n, K=k, dtype=_native.dtype_code(x2),
                           values_dtype=_values_code(values), y=_native.Out(y), y_stride=n, bias=bias32, scale=scale)


def _linear_torch(x2, values, meta, scale, bias32):
    return sparse24_ref(x2, Sparse24Weight(values, meta, (values.shape[0], 2 * values.shape[1]), scale), bias32)


def _linear_cpu(x2, values, meta, scale, bias32):
    y, args = _linear_args(x2, values, meta, scale, bias32)
    _native.call(_native.require().sparse24_linear_cpu, args, threads=torch.get_num_threads())
    return y


def _linear_cuda(x2, values, meta, scale, bias32):
    C = _native.require()
    y, args = _linear_args(x2, values, meta, scale, bias32)
    device, stream = _native.cuda_stream(x2)
    n_ws = _native.call(C.sparse24_linear_cuda_workspace, args, device=device)  # split-K partials, from torch
    _native.call(C.sparse24_linear_cuda, args, workspace=_native.Out(x2.new_empty(max(n_ws, 1), dtype=torch.uint8)),
                 workspace_bytes=n_ws, device=device, stream=stream)
    return y


def _linear_triton(x2, values, meta, scale, bias32):
    from tforge.triton import sparse24 as tsp
    y = torch.empty(x2.shape[0], values.shape[0], dtype=x2.dtype, device=x2.device)
    tsp.sparse24_linear(x2, values, meta, scale, bias32, y)
    return y


# sparse24_linear on each backend: (x2 (M, K), values, meta, scale fp32 or None, bias fp32 or None) -> y (M, N),
# x2's dtype; M > 0 and N > 0.
SPARSE24_LINEAR = {"torch": _linear_torch, "cpu": _linear_cpu, "cuda": _linear_cuda, "triton": _linear_triton}


def _resolve_linear(x: Tensor, values_dtype: torch.dtype, backend: Optional[str]) -> str:
    return _backend.resolve(x.device, x.dtype, backend, supports=lambda n: _linear_reason(n, x.device, values_dtype),
                            impls=SPARSE24_LINEAR)


# ---------------------------------------------------------------- custom op

@_dispatch.custom_op("tforge::sparse24_linear")
def _sparse24_linear_op(x: Tensor, values: Tensor, meta: Tensor, scale: Optional[Tensor], bias: Optional[Tensor],
                        backend: str) -> Tensor:
    n, k = values.shape[0], 2 * values.shape[1]
    x2 = _native.as_rows(x, k)
    if x2.shape[0] == 0 or n == 0:
        return x.new_empty((*x.shape[:-1], n))
    scale = scale.float().contiguous() if scale is not None else None
    bias32 = bias.float().contiguous() if bias is not None else None
    y = SPARSE24_LINEAR[backend](x2, values.contiguous(), meta.contiguous(), scale, bias32)
    return y.reshape(*x.shape[:-1], n)


@_sparse24_linear_op.register_fake
def _(x, values, meta, scale, bias, backend):
    return x.new_empty((*x.shape[:-1], values.shape[0]))


def _linear_setup_context(ctx, inputs, output):
    x, values, meta, scale, bias, _ = inputs
    ctx.save_for_backward(values, meta, scale)
    ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _linear_backward(ctx, grad_y):
    values, meta, scale = ctx.saved_tensors
    n = values.shape[0]
    grad_x = grad_bias = None
    g2 = grad_y.reshape(-1, n)
    if ctx.needs_input_grad[0]:
        # dL/dx = dL/dy @ W: the dense weight at the gradient's dtype (as F.linear's backward does).
        w = _dense_weight(values, meta, scale, grad_y.dtype)
        grad_x = (g2 @ w).reshape(ctx.x_shape).to(ctx.x_dtype)
    if ctx.bias_dtype is not None and ctx.needs_input_grad[4]:
        grad_bias = g2.float().sum(0).to(ctx.bias_dtype)
    return grad_x, None, None, None, grad_bias, None


_sparse24_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup_context)


# ---------------------------------------------------------------- public API

def sparse24_linear(x: Tensor, packed: Sparse24Weight, bias: Optional[Tensor] = None, *,
                    backend: Optional[str] = None) -> Tensor:
    """y = x @ W^T + bias with W the 2:4 weight held by `packed` (N, K); x (..., K) float32/bfloat16/float16,
    y (..., N) in x's dtype, fp32 accumulation. Float values must have x's dtype; int8 values (with
    packed.scale) give y = (x @ Wq^T) * scale + bias. Differentiable in x and bias."""
    op = "sparse24_linear"
    n, k = _check_packed(op, packed)
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{op}: x must be a float32/bfloat16/float16 tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"{op}: x must have shape (..., {k}) (K = the packed weight's in_features), "
                         f"got {tuple(x.shape)}")
    values = packed.values
    if values.dtype == torch.int8:
        if packed.scale is None:
            raise ValueError(f"{op}: int8 values need packed.scale (one fp32 scale per output channel)")
    elif values.dtype != x.dtype:
        raise ValueError(f"{op}: dtype mismatch: x is {x.dtype} but the packed values are {values.dtype} "
                         f"(convert one: packed.to(dtype=...) or x.to(...))")
    if values.device != x.device:
        raise ValueError(f"{op}: x is on {x.device} but the packed weight is on {values.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point() or tuple(bias.shape) != (n,):
            raise ValueError(f"{op}: bias must be a float tensor of shape ({n},), got "
                             f"{getattr(bias, 'dtype', type(bias).__name__)} {tuple(getattr(bias, 'shape', ()))}")
        if bias.device != x.device:
            raise ValueError(f"{op}: bias is on {bias.device} but x is on {x.device}")
    name = _resolve_linear(x, values.dtype, backend)
    return _dispatch.call(_sparse24_linear_op, x, values, packed.meta, packed.scale, bias, name)
