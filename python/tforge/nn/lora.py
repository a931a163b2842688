"""LoRALinear: a frozen torch.nn.Linear plus a trainable low-rank update
(Hu et al., 2021): y = base(x) + (alpha / rank) * B(A(dropout(x))), B zero-initialised
so a fresh adapter leaves the output unchanged; merge() folds the update into a
plain nn.Linear.

For a fused projection (one Linear producing q, k and v side by side) the update
can be limited to some output segments: ``segments`` gives the sizes of the output
blocks and ``active`` which of them get an adapter; every active block owns its own
rank-r pair (A_i, B_i), stored stacked as one A (n_active * r, in) and a
block-masked B (out, n_active * r), so the cost stays two small GEMMs.
"""
import math
from typing import Optional, Sequence

import torch
from torch import Tensor


class LoRALinear(torch.nn.Module):
    """Wrap ``base`` (its parameters are frozen, not copied) with a rank-``rank`` adapter.

    Args: base (nn.Linear), rank (r >= 1), alpha (scale = alpha / rank), dropout on the
    adapter's input; segments/active (optional) restrict the update to output blocks.
    Parameters: ``base.weight`` / ``base.bias`` (frozen), ``lora_A`` (n_active*r, in),
    ``lora_B`` (out, n_active*r).
    """

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 segments: Optional[Sequence[int]] = None, active: Optional[Sequence[bool]] = None):
        super().__init__()
        if not isinstance(base, torch.nn.Linear):
            raise ValueError(f"LoRALinear: base must be a torch.nn.Linear, got {type(base).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRALinear: rank must be a positive int, got {rank!r}")
        if not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ValueError(f"LoRALinear: alpha must be a finite number, got {alpha!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRALinear: dropout must be in [0, 1), got {dropout!r}")
        out_f, in_f = base.weight.shape
        if segments is None:
            segments, active = (out_f,), (True,)
        segments = tuple(int(s) for s in segments)
        active = tuple(bool(a) for a in (active if active is not None else [True] * len(segments)))
        if sum(segments) != out_f or any(s < 1 for s in segments):
            raise ValueError(f"LoRALinear: segments {segments} must be positive and sum to out_features {out_f}")
        if len(active) != len(segments) or not any(active):
            raise ValueError(f"LoRALinear: active {active} must flag each of the {len(segments)} segments, "
                             "at least one True")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        self.segments, self.active = segments, active
        n_active = sum(active)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = torch.nn.Parameter(torch.empty(n_active * rank, in_f, **kw))
        self.lora_B = torch.nn.Parameter(torch.zeros(out_f, n_active * rank, **kw))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and PEFT
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        if len(segments) == 1:
            self.register_buffer("lora_mask", None, persistent=False)
        else:  # block structure: rows of segment i see only columns of adapter i
            mask = torch.zeros(out_f, n_active * rank, **kw)
            row, j = 0, 0
            for size, on in zip(segments, active):
                if on:
                    mask[row:row + size, j * rank:(j + 1) * rank] = 1
                    j += 1
                row += size
            self.register_buffer("lora_mask", mask, persistent=False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> Tensor:
        """The frozen base weight (so code reading .weight still works)."""
        return self.base.weight

    @property
    def bias(self) -> Optional[Tensor]:
        return self.base.bias

    def _b(self) -> Tensor:
        return self.lora_B if self.lora_mask is None else self.lora_B * self.lora_mask

    def delta_weight(self) -> Tensor:
        """scale * B @ A, shaped like base.weight."""
        return (self._b() @ self.lora_A) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        delta = torch.nn.functional.linear(torch.nn.functional.linear(self.dropout(x), self.lora_A), self._b())
        return y + delta.to(y.dtype) * self.scaling

    @torch.no_grad()
    def merge(self) -> torch.nn.Linear:
        """A new plain nn.Linear computing the same function (weight + scale * B A, base bias);
        its parameters require grad, as a fresh nn.Linear's do."""
        base = self.base
        merged = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                                 device=base.weight.device, dtype=base.weight.dtype)
        merged.weight.copy_(base.weight + self.delta_weight().to(base.weight.dtype))
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        return merged

    def extra_repr(self) -> str:
        seg = "" if len(self.segments) == 1 else f", segments={self.segments}, active={self.active}"
        return f"rank={self.rank}, alpha={self.alpha}{seg}"
