"""tforge.nn.Int8Linear: an inference-only drop-in for nn.Linear with int8
weights (per-output-channel scales).

activations="int8" (W8A8): each forward quantises the input per token and runs
the fused int8 GEMM (dequantisation, bias and cast in the epilogue).
activations="fp" (weight-only): the input stays in floating point and the int8
weight is dequantised on the fly, for the memory-bound small-batch case where
weight bytes dominate. An optional `smooth` vector (SmoothQuant factors that
could not be folded into a preceding norm) divides the input first.
"""
from typing import Optional

import torch
from torch import Tensor

from tforge.ops.int8_gemm import int8_linear, quantize_per_channel, quantize_per_token

_MODES = ("int8", "fp")


class Int8Linear(torch.nn.Module):
    """Buffers (state_dict): ``weight`` int8 (out, in), ``weight_scale`` fp32 (out,),
    ``bias`` fp32 (out,) when bias=True, ``smooth`` fp32 (in,) when given."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activations: str = "int8",
                 smooth: bool = False, backend: Optional[str] = None, device=None):
        super().__init__()
        if activations not in _MODES:
            raise ValueError(f"Int8Linear: activations must be one of {_MODES}, got {activations!r}")
        self.in_features, self.out_features = in_features, out_features
        self.activations, self.backend = activations, backend
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)
        self.register_buffer("smooth", torch.ones(in_features, dtype=torch.float32, device=device) if smooth else None)

    @classmethod
    @torch.no_grad()
    def from_float(cls, linear: torch.nn.Linear, smooth: Optional[Tensor] = None, activations: str = "int8",
                   backend: Optional[str] = None) -> "Int8Linear":
        """Quantise `linear`'s weight per output channel. `smooth` (in_features,): SmoothQuant
        factors s; the layer then computes (x / s) @ (W * s)^T, which equals x @ W^T."""
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"Int8Linear.from_float expects an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach().float()
        if smooth is not None:
            if tuple(smooth.shape) != (linear.in_features,):
                raise ValueError(f"Int8Linear.from_float: smooth must have shape ({linear.in_features},), "
                                 f"got {tuple(smooth.shape)}")
            w = w * smooth.float().to(w.device)[None, :]
        mod = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, activations=activations,
                  smooth=smooth is not None, backend=backend, device=w.device)
        q, scale = quantize_per_channel(w, backend="torch")
        mod.weight.copy_(q)
        mod.weight_scale.copy_(scale)
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach().float())
        if smooth is not None:
            mod.smooth.copy_(smooth.float())
        return mod

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear: expected input (..., {self.in_features}), got {tuple(x.shape)}")
        if self.activations == "fp":
            if self.smooth is not None:
                x = x / self.smooth.to(x.dtype)
            w = self.weight.to(x.dtype) * self.weight_scale.to(x.dtype)[:, None]
            bias = self.bias.to(x.dtype) if self.bias is not None else None
            return torch.nn.functional.linear(x, w, bias)
        # SmoothQuant's x / s is fused into the quantisation pass as x * (1 / s).
        inv_smooth = self.smooth.reciprocal() if self.smooth is not None else None
        x_q, x_scale = quantize_per_token(x, col_scale=inv_smooth, backend=self.backend)
        return int8_linear(x_q, x_scale, self.weight, self.weight_scale, self.bias, out_dtype=x.dtype,
                           backend=self.backend)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, activations={self.activations!r}, smooth={self.smooth is not None}")
