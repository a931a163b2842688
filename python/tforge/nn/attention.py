"""tforge.nn.Attention: multi-head self-attention (fused qkv projection,
optional rotary embeddings, grouped-query heads) on tforge.attention, for the
padded (batch, seqlen, dim) and packed (total_tokens, dim) + cu_seqlens forms."""
from typing import Optional

import torch
from torch import Tensor

from tforge.nn.rotary import RotaryEmbedding, apply_rotary, positions_from_cu_seqlens
from tforge.ops.attention import attention, attention_varlen


class Attention(torch.nn.Module):
    """Self-attention block.

    Args: embed_dim, num_heads; num_kv_heads (grouped-query; default num_heads);
    head_dim (default embed_dim // num_heads); bias (projections); causal;
    rotary (apply RoPE to q and k, base rotary_base); window (sliding window);
    backend (pin a tforge backend). Parameters: ``qkv`` (Linear to
    (heads + 2 * kv_heads) * head_dim) and ``out_proj``.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: Optional[int] = None,
                 head_dim: Optional[int] = None, bias: bool = True, causal: bool = False, rotary: bool = False,
                 rotary_base: float = 10000.0, window=None, backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"Attention: num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(f"Attention: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
            head_dim = embed_dim // num_heads
        self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim = embed_dim, num_heads, num_kv_heads, head_dim
        self.causal, self.window, self.backend = causal, window, backend
        kw = dict(device=device, dtype=dtype)
        self.qkv = torch.nn.Linear(embed_dim, (num_heads + 2 * num_kv_heads) * head_dim, bias=bias, **kw)
        self.out_proj = torch.nn.Linear(num_heads * head_dim, embed_dim, bias=bias, **kw)
        self.rotary = RotaryEmbedding(head_dim, rotary_base, device=device) if rotary else None

    def _split(self, x: Tensor):
        h, hk, d = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv(x)
        q, k, v = qkv.split([h * d, hk * d, hk * d], dim=-1)
        lead = x.shape[:-1]
        return q.view(*lead, h, d), k.view(*lead, hk, d), v.view(*lead, hk, d)

    def forward(self, x: Tensor, attn_bias: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None,
                max_seqlen: Optional[int] = None, positions: Optional[Tensor] = None) -> Tensor:
        """x: (batch, seqlen, embed_dim), or (total_tokens, embed_dim) with cu_seqlens
        (int32 offsets) and max_seqlen for packed sequences. positions: token
        positions for the rotary embedding (default: 0.. within each sequence)."""
        q, k, v = self._split(x)
        packed = cu_seqlens is not None
        if self.rotary is not None:
            if positions is None:
                positions = (positions_from_cu_seqlens(cu_seqlens, x.shape[0]) if packed
                             else torch.arange(x.shape[1], device=x.device))
            cos, sin = self.rotary(positions)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if packed:
            if attn_bias is not None:
                raise ValueError("Attention: attn_bias is not supported with packed sequences (cu_seqlens)")
            if max_seqlen is None:
                max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if cu_seqlens.numel() > 1 else 0
            out = attention_varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=self.causal,
                                   window=self.window, backend=self.backend)
        else:
            out = attention(q, k, v, causal=self.causal, window=self.window, attn_bias=attn_bias,
                            backend=self.backend)
        return self.out_proj(out.flatten(-2))

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, heads={self.num_heads}, kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, causal={self.causal}, rotary={self.rotary is not None}")
