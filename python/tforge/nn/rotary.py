"""Rotary position embeddings (RoPE, the rotate-half form used by GPT-NeoX and
Llama), applied to (..., seqlen, heads, head_dim) tensors."""
from typing import Optional

import torch
from torch import Tensor


class RotaryEmbedding(torch.nn.Module):
    """cos/sin tables for positions; `base` as in Llama (10000). No parameters,
    so it adds nothing to state_dict (the table is a non-persistent buffer)."""

    def __init__(self, head_dim: int, base: float = 10000.0, device=None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor):
        """positions: int tensor of any shape -> (cos, sin) of shape (*positions.shape, head_dim), fp32."""
        freqs = positions.float()[..., None] * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (..., seqlen, heads, head_dim); cos/sin: (..., seqlen, head_dim) broadcast over heads."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return (x.float() * cos + _rotate_half(x.float()) * sin).to(x.dtype)


def positions_from_cu_seqlens(cu_seqlens: Tensor, total: int) -> Tensor:
    """Position of each packed token within its own sequence: [0..l0-1, 0..l1-1, ...]."""
    idx = torch.arange(total, device=cu_seqlens.device)
    starts = cu_seqlens[:-1].long()
    seq_of = torch.searchsorted(cu_seqlens[1:].long(), idx, right=True)
    return idx - starts[seq_of]


def default_positions(seqlen: int, device, offset: Optional[int] = 0) -> Tensor:
    return torch.arange(offset, offset + seqlen, device=device)
