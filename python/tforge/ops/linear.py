"""Linear layer: ``y = x @ weight^T + bias``, computed by F.linear.

``linear_ref`` is the pure-PyTorch reference (fp32 upcast) that tests compare
against. ``linear`` checks its arguments (ValueError saying what is wrong) and
the backend as every tforge op does, then calls F.linear on every backend.

Why no tforge kernel and no custom op: the one CPU alternative the models had
used -- PyTorch's oneDNN matmul (the private torch.ops.mkldnn._linear_pointwise)
for y and dx -- measured 0.87-1.00x F.linear in CPU time at the GPT
benchmark's shapes on this Intel Xeon, 1 and 2 threads (benchmarks/results/
linear.md; train_throughput.md had recorded it 10-20 % faster on an AMD EPYC),
so only the plain path is kept. Commit 4a9c73e has it as the "cpu" backend of a tforge::linear custom
op, probe and fallback tests included, should a machine show it paying
(benchmarks/bench_linear.py keeps timing it). Calling F.linear directly keeps
PyTorch's autograd and autocast, and lets torch.compile fuse the GEMM with its
neighbours, which a custom op around it would hide.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tforge import _backend


def linear_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Reference linear: fp32 math (fp64 stays fp64), result in x.dtype."""
    acc = torch.promote_types(x.dtype, torch.float32)
    return F.linear(x.to(acc), weight.to(acc), None if bias is None else bias.to(acc)).to(x.dtype)


def _dt(t: Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def check_args(x, weight, bias) -> None:
    """ValueError saying what is wrong, before any GEMM runs. Under torch.autocast on x's device, differing
    floating dtypes are allowed: autocast casts them, as it does for F.linear."""
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is None and name == "bias":
            continue
        if not isinstance(t, Tensor):
            raise ValueError(f"linear: {name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"linear: {name} must be floating point, got {_dt(t)}")
    if weight.dim() != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"linear: x's last dimension must be in_features = {k} (weight is {n} x {k}), "
                         f"got x of shape {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"linear: bias must have shape ({n},) (out_features), got {tuple(bias.shape)}")
    autocast = x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"linear: {name} is on {t.device} but x is on {x.device}")
        if t.dtype != x.dtype and not autocast:
            raise ValueError(f"linear: {name} is {_dt(t)} but x is {_dt(x)}; cast one of them "
                             "(or run under torch.autocast)")


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, backend: Optional[str] = None) -> Tensor:
    """``x @ weight^T + bias``, as F.linear (which computes it, on every backend).

    x: (..., in_features); weight: (out_features, in_features); bias: (out_features,) or None; one floating
    dtype and one device (under torch.autocast the dtypes may differ: they are cast as for F.linear).
    backend: None, "cpu", "cuda", "triton" or "torch", checked as for tforge's other ops (an unknown name,
    or one that cannot serve x's device and dtype, raises ValueError). Differentiable in x, weight and bias.
    """
    check_args(x, weight, bias)
    _backend.resolve(x.device, x.dtype, backend)
    return F.linear(x, weight, bias)
