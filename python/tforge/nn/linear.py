"""tforge.nn.Linear: a subclass of torch.nn.Linear whose forward calls
tforge.linear (F.linear after tforge's argument checks; see ops/linear.py for
why there is no faster path), so constructor, parameters, initialisation,
state_dict keys and isinstance checks (LoRA wrappers, Int8Linear.from_float)
are PyTorch's own, and its hooks run as for torch.nn.Linear.
"""
from typing import Optional

import torch
from torch import Tensor

from tforge import _backend
from tforge.ops.linear import linear


class Linear(torch.nn.Linear):
    """torch.nn.Linear(in_features, out_features, bias=True, device=None, dtype=None) computed by
    tforge.linear; ``backend`` (keyword) is passed on to it (checked, as for tforge's other modules)."""

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
