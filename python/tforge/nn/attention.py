"""tforge.nn.Attention: multi-head self-attention on tforge.attention_qkvpacked, for the
padded (batch, seqlen, dim) and packed (total_tokens, dim) + cu_seqlens forms.

The fused qkv Linear's output, viewed as (..., heads + 2 * kv_heads, head_dim), is the
op's packed layout as it stands: no split or transpose before attention, and the
backward of the cpu / cuda kernels writes dq, dk, dv into one gradient of that output.
Rotary embeddings rotate the q and k heads of it in one pass (tforge.nn.rotary).
"""
from typing import Optional

import torch
from torch import Tensor

from tforge.nn.rotary import RotaryEmbedding, positions_from_cu_seqlens, rope_qkvpacked
from tforge.ops.attention_qkvpacked import attention_qkvpacked, attention_varlen_qkvpacked


def max_seqlen_of(cu_seqlens: Tensor) -> int:
    """The longest sequence of cu_seqlens (0 without any); reads the offsets (a sync on GPU)."""
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if cu_seqlens.numel() > 1 else 0


class Attention(torch.nn.Module):
    """Self-attention block.

    Args: embed_dim, num_heads; num_kv_heads (grouped-query; default num_heads);
    head_dim (default embed_dim // num_heads); bias (projections); causal;
    rotary (apply RoPE to q and k, base rotary_base); window (sliding window);
    backend (pin a tforge attention backend). Parameters: ``qkv`` (torch.nn.Linear to
    (heads + 2 * kv_heads) * head_dim, q rows first, then k, then v) and ``o`` (the
    output projection, torch.nn.Linear). A state_dict with
    the output projection under its earlier name ``out_proj`` loads too.
    For tforge.models.apply_lora, qkv has segments "q", "k", "v" and o the role "o".
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
        self.o = torch.nn.Linear(num_heads * head_dim, embed_dim, bias=bias, **kw)
        self.qkv.lora_segments = (("q", num_heads * head_dim), ("k", num_kv_heads * head_dim),
                                  ("v", num_kv_heads * head_dim))
        self.o.lora_role = "o"
        self.rotary = RotaryEmbedding(head_dim, rotary_base, device=device) if rotary else None
        self.register_load_state_dict_pre_hook(_rename_out_proj)

    def forward(self, x: Tensor, attn_bias: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None,
                max_seqlen: Optional[int] = None, positions: Optional[Tensor] = None) -> Tensor:
        """x: (batch, seqlen, embed_dim), or (total_tokens, embed_dim) with cu_seqlens
        (int32 offsets) and max_seqlen (default: read from cu_seqlens) for packed sequences.
        attn_bias (padded form only) as in tforge.attention. positions: token positions for
        the rotary embedding (default: 0.. within each sequence)."""
        packed = cu_seqlens is not None
        if packed and attn_bias is not None:
            raise ValueError("Attention: attn_bias is not supported with packed sequences (cu_seqlens)")
        lead = x.shape[:-1]
        hq, hk = self.num_heads, self.num_kv_heads
        qkv = self.qkv(x).view(*lead, hq + 2 * hk, self.head_dim)
        if self.rotary is not None:
            if positions is None:
                positions = (positions_from_cu_seqlens(cu_seqlens, x.shape[0]) if packed
                             else torch.arange(x.shape[-2], device=x.device))
            cos, sin = self.rotary.tables(positions, qkv.dtype)  # in the activations' dtype (autocast: bf16)
            qkv = rope_qkvpacked(qkv, cos, sin, hq + hk)
        if packed:
            longest = max_seqlen if max_seqlen is not None else max_seqlen_of(cu_seqlens)
            out = attention_varlen_qkvpacked(qkv, cu_seqlens, longest, self.causal, window=self.window,
                                             num_heads_k=hk, backend=self.backend)
        else:
            out = attention_qkvpacked(qkv, self.causal, None, self.window, attn_bias, num_heads_k=hk,
                                      backend=self.backend)
        return self.o(out.reshape(*lead, hq * self.head_dim))

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, heads={self.num_heads}, kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, causal={self.causal}, rotary={self.rotary is not None}")


def _rename_out_proj(module, state_dict, prefix, *args) -> None:
    """Load pre-hook: the output projection was called out_proj before it was o."""
    for key in [k for k in state_dict if k.startswith(prefix + "out_proj.")]:
        state_dict[prefix + "o." + key[len(prefix + "out_proj."):]] = state_dict.pop(key)
