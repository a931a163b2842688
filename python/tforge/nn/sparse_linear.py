"""tforge.nn.SparseLinear: a drop-in for nn.Linear whose weight is n:m (2:4) sparse, or unstructured
sparse, with two forms.

Training form (what sparsify_ and from_dense produce): a dense ``weight`` Parameter, ``bias`` and a bool
buffer ``mask`` (same shape as weight, True = kept). forward computes F.linear(x, weight * mask, bias),
so the gradient of every pruned weight is exactly zero and fine-tuning keeps the pattern (pruned
weights are also zeroed at construction, so optimizer steps, weight decay included, leave them at 0).

Packed (inference) form, after ``.pack()``: buffers ``values`` (N, K/2), ``meta`` (N, ceil(K/8)) uint8
and, for weight-only int8 (pack(weight_dtype=torch.int8)), ``scale`` (N,) fp32; forward runs
tforge.ops.sparse24.sparse24_linear, which reads only the kept weights. ``.unpack()`` returns to the
training form; its mask is then the 2 positions per group that the metadata records (which contain
every non-zero weight).

state_dict: training form {weight, bias, mask}; packed form {values, meta, [scale], bias}. Loading either
kind into any SparseLinear of the same in/out features switches the module to the form of the
state_dict first, so ``SparseLinear(in, out).load_state_dict(sd)`` works for both forms (and
``SparseLinear(in, out, packed=True)`` builds an empty packed module directly).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tforge.ops.sparse24 import Sparse24Weight, meta_cols, nm_mask, pack_2to4, unpack_2to4, _positions

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_PACKED_KEYS = ("values", "meta", "scale")


def nm_violation(mask: Tensor, n: int = 2, m: int = 4) -> Optional[str]:
    """None when the bool mask (out, in) keeps at most n of every m consecutive inputs, else the first
    offending (row, group) in words."""
    k = mask.shape[-1]
    if k % m != 0:
        return f"in_features {k} is not a multiple of {m}"
    kept = mask.reshape(mask.shape[0], k // m, m).sum(-1)
    bad = kept > n
    if bool(bad.any()):
        row, group = (int(i) for i in bad.nonzero()[0])
        return f"row {row}, group {group} keeps {int(kept[row, group])} of {m} (at most {n} allowed)"
    return None


class SparseLinear(torch.nn.Module):
    """nn.Linear(in_features, out_features, bias, device, dtype) with a sparse weight.

    mask_init: "nm" (default) starts from the magnitude n:m mask of the initial weight (in_features must
    be a multiple of m); "dense" starts with every weight kept (a mask is expected to be loaded or set).
    packed=True builds the packed form directly (empty, for load_state_dict), values in `weight_dtype`
    (torch.int8 for weight-only int8, default: dtype). backend: forwarded to sparse24_linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 n: int = 2, m: int = 4, mask_init: str = "nm", packed: bool = False,
                 weight_dtype: Optional[torch.dtype] = None, backend: Optional[str] = None):
        super().__init__()
        if mask_init not in ("nm", "dense"):
            raise ValueError(f"SparseLinear: mask_init must be 'nm' or 'dense', got {mask_init!r}")
        if not 1 <= n <= m:
            raise ValueError(f"SparseLinear: need 1 <= n <= m, got n={n}, m={m}")
        self.in_features, self.out_features = in_features, out_features
        self.n, self.m, self.backend = n, m, backend
        dtype = dtype or torch.get_default_dtype()
        self._dense_dtype = dtype  # the training form's dtype, restored by unpack()
        self.bias = torch.nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        if packed:
            self._set_packed_buffers(weight_dtype or dtype, device)
            if self.bias is not None:
                torch.nn.init.zeros_(self.bias)
            return
        self.weight = torch.nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool, device=device))
        self.reset_parameters()
        if mask_init == "nm":
            if in_features % m != 0:
                raise ValueError(f"SparseLinear: in_features = {in_features} is not a multiple of m = {m}, so no "
                                 f"{n}:{m} mask exists; use mask_init='dense' and set an unstructured mask")
            with torch.no_grad():
                self.mask.copy_(nm_mask(self.weight.detach().abs().float(), n, m))
                self.weight.mul_(self.mask)

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation (training form), then the mask applied."""
        if self.is_packed:
            raise RuntimeError("SparseLinear.reset_parameters: the packed form has no dense weight; unpack() first")
        torch.nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            torch.nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            self.weight.mul_(self.mask)

    # ------------------------------------------------------------ construction

    @classmethod
    @torch.no_grad()
    def from_dense(cls, linear: torch.nn.Linear, mask: Optional[Tensor] = None, *, n: int = 2, m: int = 4,
                   backend: Optional[str] = None) -> "SparseLinear":
        """Training-form SparseLinear with `linear`'s weight (copied) and bias and a fixed `mask`
        (bool or 0/1, shaped like the weight; default: the magnitude n:m mask). Pruned weights are zeroed."""
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"SparseLinear.from_dense expects an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        if mask is None:
            if w.shape[1] % m != 0:
                raise ValueError(f"SparseLinear.from_dense: in_features = {w.shape[1]} is not a multiple of m = {m}; "
                                 "pass an explicit (unstructured) mask")
            mask = nm_mask(w.detach().abs().float(), n, m)
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(w.shape):
            raise ValueError(f"SparseLinear.from_dense: mask must have the weight's shape {tuple(w.shape)}, got "
                             f"{tuple(getattr(mask, 'shape', ()))}")
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("SparseLinear.from_dense: a non-bool mask must hold only 0 and 1")
            mask = mask != 0
        mod = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device,
                  dtype=w.dtype, n=n, m=m, mask_init="dense", backend=backend)
        mod.mask.copy_(mask.to(w.device))
        mod.weight.copy_(w.detach() * mod.mask)
        mod.weight.requires_grad_(w.requires_grad)
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach())
            mod.bias.requires_grad_(linear.bias.requires_grad)
        return mod

    # ------------------------------------------------------------ forms

    @property
    def is_packed(self) -> bool:
        return "values" in self._buffers

    def _set_packed_buffers(self, values_dtype: torch.dtype, device, values: Optional[Tensor] = None,
                            meta: Optional[Tensor] = None, scale: Optional[Tensor] = None) -> None:
        n, k = self.out_features, self.in_features
        if k % 4 != 0:
            raise ValueError(f"SparseLinear: the packed 2:4 form needs in_features % 4 == 0, got {k}")
        if values_dtype not in _FLOAT_DTYPES + (torch.int8,):
            raise ValueError(f"SparseLinear: packed values must be float32/bfloat16/float16/int8, got {values_dtype}")
        if values is None:
            values = torch.zeros(n, k // 2, dtype=values_dtype, device=device)
            # 0x44: every group keeps positions (0, 1), a valid layout for an all-zero weight
            meta = torch.full((n, meta_cols(k)), 0x44, dtype=torch.uint8, device=device)
            if (k // 4) % 2:
                meta[:, -1] = 0x04
            scale = torch.ones(n, dtype=torch.float32, device=device) if values_dtype == torch.int8 else None
        self._parameters.pop("weight", None)
        self._buffers.pop("mask", None)
        self._buffers.pop("scale", None)
        self.register_buffer("values", values)
        self.register_buffer("meta", meta)
        if scale is not None:
            self.register_buffer("scale", scale)

    def _set_training_tensors(self, weight: Tensor, mask: Tensor) -> None:
        for name in _PACKED_KEYS:
            self._buffers.pop(name, None)
        self.weight = torch.nn.Parameter(weight)
        self.register_buffer("mask", mask)

    def packed_weight(self) -> Sparse24Weight:
        """The packed form's weight as a Sparse24Weight."""
        if not self.is_packed:
            raise RuntimeError("SparseLinear.packed_weight: the module is in training form; call pack() first")
        scale = self._buffers.get("scale")
        return Sparse24Weight(self.values, self.meta, (self.out_features, self.in_features),
                              scale.float() if scale is not None else None)

    @torch.no_grad()
    def dense_weight(self) -> Tensor:
        """The effective dense weight (weight * mask, or the unpacked and dequantised values)."""
        if self.is_packed:
            return unpack_2to4(self.packed_weight(), dequantize=True, dtype=self._dense_dtype)
        return self.weight * self.mask

    @torch.no_grad()
    def pack(self, weight_dtype: Optional[torch.dtype] = None) -> "SparseLinear":
        """Switch (in place) to the packed inference form; returns self. weight_dtype: None keeps the
        weight's dtype, a float dtype converts, torch.int8 quantises per output channel (weight-only
        int8 2:4, scales from tforge.ops.int8_gemm.quantize_per_channel). Needs a 2:4-compliant mask."""
        if self.is_packed:
            raise RuntimeError("SparseLinear.pack: already packed")
        if weight_dtype is not None and weight_dtype not in _FLOAT_DTYPES + (torch.int8,):
            raise ValueError(f"SparseLinear.pack: weight_dtype must be None, a float dtype or torch.int8, "
                             f"got {weight_dtype}")
        why = nm_violation(self.mask, 2, 4)
        if why is not None:
            raise ValueError(f"SparseLinear.pack: the mask is not 2:4 ({why}); only 2:4 masks can be packed "
                             "(unstructured sparsity stays in the training form)")
        w = self.weight.detach() * self.mask
        self._dense_dtype = w.dtype
        if weight_dtype == torch.int8:
            from tforge.ops.int8_gemm import quantize_per_channel
            q, scale = quantize_per_channel(w.float(), backend="torch")
            packed = pack_2to4(q, scale)
        else:
            packed = pack_2to4(w.to(weight_dtype) if weight_dtype is not None else w)
        self._set_packed_buffers(packed.values.dtype, w.device, packed.values, packed.meta, packed.scale)
        return self

    @torch.no_grad()
    def unpack(self) -> "SparseLinear":
        """Switch (in place) back to the training form (int8 values are dequantised); returns self."""
        if not self.is_packed:
            raise RuntimeError("SparseLinear.unpack: already in training form")
        packed = self.packed_weight()
        dense = unpack_2to4(packed, dequantize=True, dtype=self._dense_dtype)
        i0, i1 = _positions(packed.meta, self.in_features)
        mask = torch.zeros(self.out_features, self.in_features // 4, 4, dtype=torch.bool, device=dense.device)
        mask.scatter_(-1, torch.stack([i0, i1], -1), True)
        self._set_training_tensors(dense, mask.reshape(self.out_features, self.in_features))
        return self

    def _apply(self, fn, recurse=True):
        # module.to(dtype) / .half() convert floating buffers; the int8 scale stays fp32 (moved, not rounded).
        scale = self._buffers.get("scale")
        super()._apply(fn, recurse)
        moved = self._buffers.get("scale")
        if scale is not None and moved is not None and moved.dtype != torch.float32:
            self._buffers["scale"] = scale.to(moved.device)
        return self

    # ------------------------------------------------------------ state_dict of either form

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        values = state_dict.get(prefix + "values")
        weight = state_dict.get(prefix + "weight")
        if isinstance(values, torch.Tensor):
            has_scale = prefix + "scale" in state_dict
            cur = self._buffers.get("values")
            if cur is None or cur.dtype != values.dtype or (("scale" in self._buffers) != has_scale):
                dev = self.bias.device if self.bias is not None else (cur.device if cur is not None
                                                                      else self.weight.device)
                self._set_packed_buffers(values.dtype, dev)
                if has_scale and "scale" not in self._buffers:
                    self.register_buffer("scale", torch.ones(self.out_features, dtype=torch.float32, device=dev))
        elif isinstance(weight, torch.Tensor) and self.is_packed:
            dev = self.values.device
            self._set_training_tensors(
                torch.zeros(self.out_features, self.in_features, dtype=weight.dtype, device=dev),
                torch.ones(self.out_features, self.in_features, dtype=torch.bool, device=dev))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # ------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:
        if self.is_packed:
            from tforge.ops.sparse24 import sparse24_linear
            return sparse24_linear(x, self.packed_weight(), self.bias, backend=self.backend)
        return F.linear(x, self.weight * self.mask, self.bias)

    @torch.no_grad()
    def sparsity(self) -> float:
        """Fraction of zero weights in the effective dense weight."""
        numel = self.out_features * self.in_features
        if numel == 0:
            return 0.0
        if self.is_packed:
            nonzero = int((self.values != 0).sum())
        else:
            nonzero = int(((self.weight != 0) & self.mask).sum())
        return 1.0 - nonzero / numel

    def pattern(self) -> str:
        """'2:4' (or the module's n:m) when the mask complies, else 'unstructured'."""
        if self.is_packed:
            return "2:4"
        if nm_violation(self.mask, self.n, self.m) is None:
            return f"{self.n}:{self.m}"
        return "unstructured"

    def extra_repr(self) -> str:
        form = "packed" if self.is_packed else "training"
        s = (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
             f"form={form}, pattern={self.pattern()}, sparsity={100 * self.sparsity():.1f}%")
        if self.is_packed:
            s += f", weight_dtype={str(self.values.dtype).replace('torch.', '')}"
        return s
