"""tforge.nn.Linear: a subclass of torch.nn.Linear whose forward calls
tforge.linear, so constructor, parameters, initialisation, state_dict keys and
isinstance checks (LoRA wrappers, Int8Linear.from_float) are PyTorch's own.
Being a module that calls an op, its forward and backward hooks run as for
torch.nn.Linear.
"""
from typing import Optional

import torch
from torch import Tensor

from tforge import _backend
from tforge.ops.linear import linear


class Linear(torch.nn.Linear):
    """torch.nn.Linear(in_features, out_features, bias=True, device=None, dtype=None) computed by
    tforge.linear; ``backend`` (keyword) pins one (None: chosen per call, see tforge.linear)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 backend: Optional[str] = None):
        if backend is not None and backend not in _backend.BACKENDS:
            raise ValueError(f"Linear: unknown backend {backend!r}; expected one of "
                             f"{', '.join(_backend.BACKENDS)} or None")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", backend={self.backend!r}" if self.backend is not None else "")
