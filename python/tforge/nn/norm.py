"""tforge.nn.LayerNorm / RMSNorm: subclasses of torch.nn.LayerNorm / RMSNorm,
so constructors, parameters, state_dict keys, isinstance checks and
initialisation are PyTorch's own; only forward runs tforge's kernels.
A checkpoint saved from the torch module loads unchanged, and back.
"""
from typing import Optional

import torch
from torch import Tensor

from tforge.ops.layer_norm import layer_norm
from tforge.ops.rms_norm import rms_norm


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
