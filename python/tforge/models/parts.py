"""What GPT and BERT share besides tforge.nn modules: the checks on packed-batch offsets
and the label value the losses ignore."""
from typing import Optional

import torch
from torch import Tensor

from tforge.nn.attention import max_seqlen_of

IGNORE_INDEX = -100


def check_cu_seqlens(model: str, cu_seqlens: Tensor, total: int) -> Tensor:
    """cu_seqlens as int32, after checking it is 1-D with >= 2 offsets from 0 to `total` (the end
    points are read on CPU only: elsewhere that would be a sync)."""
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{model}: cu_seqlens must be a 1-D tensor of (documents + 1) offsets, got "
                         f"{getattr(cu_seqlens, 'shape', cu_seqlens)!r}")
    if cu_seqlens.dtype != torch.int32:
        cu_seqlens = cu_seqlens.to(torch.int32)
    if cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling():
        first, last = int(cu_seqlens[0]), int(cu_seqlens[-1])
        if first != 0 or last != total:
            raise ValueError(f"{model}: cu_seqlens must start at 0 and end at the token count {total}, "
                             f"got {first} .. {last}")
    return cu_seqlens


def resolve_max_seqlen(cu_seqlens: Tensor, max_seqlen: Optional[int]) -> int:
    """max_seqlen as given, or read from cu_seqlens."""
    return max_seqlen_of(cu_seqlens) if max_seqlen is None else int(max_seqlen)
