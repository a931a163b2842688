"""Rotary position embeddings (RoPE, the rotate-half form of GPT-NeoX and Llama):
x * cos + rotate_half(x) * sin with cos/sin repeated over both halves of head_dim.

The one implementation in tforge: ``rope`` rotates (..., heads, head_dim) tensors with
half-width tables (cos/sin of (..., 1, head_dim // 2), see ``RotaryEmbedding.tables``),
writing both halves of one output (no cat) and, the rotation being orthogonal, with a
backward that is the rotation by -sin and saves nothing of x. ``rope_qkvpacked`` rotates
the q and k heads of a packed qkv (tforge.attention_qkvpacked's layout). ``apply_rotary``
takes RotaryEmbedding's full-width tables and rotates in fp32.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor


class RotaryEmbedding(torch.nn.Module):
    """cos/sin tables for positions; `base` as in Llama (10000). No parameters,
    so it adds nothing to state_dict (the table is a non-persistent buffer)."""

    def __init__(self, head_dim: int, base: float = 10000.0, device=None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
        self.head_dim, self.base = head_dim, base
        self.register_buffer("inv_freq", self._inv_freq(device), persistent=False)

    def _inv_freq(self, device) -> Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
                                    / self.head_dim))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Recompute the table in place (after to_empty() from the meta device)."""
        if self.inv_freq.device.type != "meta":
            self.inv_freq.copy_(self._inv_freq(self.inv_freq.device))

    def forward(self, positions: Tensor) -> Tuple[Tensor, Tensor]:
        """positions: int tensor of any shape -> (cos, sin) of shape (*positions.shape, head_dim), fp32."""
        freqs = positions.float()[..., None] * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def tables(self, positions: Tensor, dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
        """(cos, sin) of shape (*positions.shape, 1, head_dim // 2) for ``rope`` (the 1 broadcasts over
        heads), in `dtype` (default fp32): the angles are computed in fp32 either way."""
        freqs = (positions.float()[..., None] * self.inv_freq)[..., None, :]
        cos, sin = freqs.cos(), freqs.sin()
        return (cos, sin) if dtype is None else (cos.to(dtype), sin.to(dtype))


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """(x1 cos - x2 sin, x2 cos + x1 sin) over the halves of the last dim, written into `out`."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    if torch.compiler.is_compiling():  # dynamo rejects out= views; inductor fuses this form anyway
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o1, o2 = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=-1.0)
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin)
    return out


def _rotate_heads(x: Tensor, cos: Tensor, sin: Tensor, heads: int) -> Tensor:
    """A new tensor: x's first `heads` heads (dim -2) rotated, the others copied."""
    if heads == x.shape[-2]:
        return _rotate(x, cos, sin)
    if torch.compiler.is_compiling():
        return torch.cat((_rotate(x[..., :heads, :], cos, sin), x[..., heads:, :]), dim=-2)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _rotate(x[..., :heads, :], cos, sin, out=out[..., :heads, :])
    out[..., heads:, :].copy_(x[..., heads:, :])
    return out


class _Rope(torch.autograd.Function):
    """The gradient of a rotation is the same rotation by -sin: nothing of x is saved and the
    backward is four fused elementwise passes, not autograd's chain of them."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor, heads: int) -> Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.heads = heads
        return _rotate_heads(x, cos, sin, heads)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate_heads(grad, cos, -sin, ctx.heads), None, None, None


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on x (..., heads, head_dim) with half-width tables cos/sin broadcastable to
    (..., 1, head_dim // 2) (RotaryEmbedding.tables), computed in x's dtype (give the tables in
    it). Returns a new contiguous tensor."""
    return _Rope.apply(x, cos, sin, x.shape[-2])


def rope_qkvpacked(qkv: Tensor, cos: Tensor, sin: Tensor, heads_qk: int) -> Tensor:
    """RoPE on the q and k heads of a packed qkv (..., heads_q + 2 * heads_k, head_dim): the first
    heads_qk = heads_q + heads_k heads are rotated, the v heads copied, into one new tensor in
    tforge.attention_qkvpacked's layout. Tables as for ``rope``."""
    if not 0 < heads_qk <= qkv.shape[-2]:
        raise ValueError(f"rope_qkvpacked: heads_qk must be in [1, {qkv.shape[-2]}] (qkv's heads), got {heads_qk}")
    return _Rope.apply(qkv, cos, sin, heads_qk)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (..., seqlen, heads, head_dim); cos/sin: (..., seqlen, head_dim) as RotaryEmbedding gives
    them (both halves equal), broadcast over heads. Rotates in fp32; result in x's dtype."""
    half = x.shape[-1] // 2
    return rope(x.float(), cos[..., None, :half].float(), sin[..., None, :half].float()).to(x.dtype)


def positions_from_cu_seqlens(cu_seqlens: Tensor, total: int) -> Tensor:
    """Position of each packed token within its own sequence: [0..l0-1, 0..l1-1, ...]."""
    idx = torch.arange(total, device=cu_seqlens.device)
    starts = cu_seqlens[:-1].long()
    seq_of = torch.searchsorted(cu_seqlens[1:].long(), idx, right=True)
    return idx - starts[seq_of]
