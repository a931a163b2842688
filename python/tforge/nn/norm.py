"""tforge.nn.LayerNorm / RMSNorm: subclasses of torch.nn.LayerNorm / RMSNorm,
so constructors, parameters, state_dict keys, isinstance checks and
initialisation are PyTorch's own; only forward runs tforge's kernels.
A checkpoint saved from the torch module loads unchanged, and back.

``make_norm`` builds either by name (the models' config field) and ``add_norm``
runs a residual add fused with the norm that follows it.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from tforge.ops.layer_norm import add_layer_norm, layer_norm
from tforge.ops.rms_norm import add_rms_norm, rms_norm


def _flatten_trailing(x: Tensor, normalized_shape: tuple, module: str) -> Tensor:
    """Normalising over several trailing dims == over their flattened product."""
    k = len(normalized_shape)
    if tuple(x.shape[-k:]) != tuple(normalized_shape):
        raise ValueError(f"{module}: expected input with trailing shape {tuple(normalized_shape)}, "
                         f"got {tuple(x.shape)}")
    return x if k == 1 else x.reshape(*x.shape[:-k], -1)


def _flat(p: Optional[Tensor]) -> Optional[Tensor]:
    return None if p is None else p.reshape(-1)


class LayerNorm(torch.nn.LayerNorm):
    """torch.nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
    device=None, dtype=None) with tforge's kernels; ``backend`` (keyword) pins one."""

    def __init__(self, *args, backend: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        x2 = _flatten_trailing(x, self.normalized_shape, "LayerNorm")
        y = layer_norm(x2, _flat(self.weight), _flat(self.bias), self.eps, backend=self.backend)
        return y.view(x.shape)


class RMSNorm(torch.nn.RMSNorm):
    """torch.nn.RMSNorm(normalized_shape, eps=None, elementwise_affine=True, device=None,
    dtype=None) with tforge's kernels. eps=None means torch.finfo(x.dtype).eps, as in torch."""

    def __init__(self, *args, backend: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        x2 = _flatten_trailing(x, self.normalized_shape, "RMSNorm")
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        y = rms_norm(x2, _flat(self.weight), eps, backend=self.backend)
        return y.view(x.shape)


def make_norm(kind: str, dim: int, eps: float, bias: bool = True) -> torch.nn.Module:
    """LayerNorm(dim, eps, bias) for kind "layer", RMSNorm(dim, eps) for "rms"."""
    if kind not in ("layer", "rms"):
        raise ValueError(f"make_norm: kind must be 'layer' or 'rms', got {kind!r}")
    return LayerNorm(dim, eps=eps, bias=bias) if kind == "layer" else RMSNorm(dim, eps=eps)


def add_norm(branch: Tensor, residual: Tensor, norm: torch.nn.Module) -> Tuple[Tensor, Tensor]:
    """(norm(branch + residual), branch + residual) in one fused kernel (tforge.add_layer_norm /
    add_rms_norm with the module's parameters; norm is a tforge LayerNorm or RMSNorm). The branch
    is cast to the residual's dtype first (under autocast the branch is bf16, the stream fp32)."""
    if branch.dtype != residual.dtype:
        branch = branch.to(residual.dtype)
    if isinstance(norm, RMSNorm):
        eps = norm.eps if norm.eps is not None else torch.finfo(residual.dtype).eps
        return add_rms_norm(branch, residual, norm.weight, eps, backend=norm.backend)
    if isinstance(norm, LayerNorm):
        return add_layer_norm(branch, residual, norm.weight, norm.bias, norm.eps, backend=norm.backend)
    raise ValueError(f"add_norm: norm must be a tforge.nn.LayerNorm or RMSNorm, got {type(norm).__name__}")
