"""fp32 -> output dtype conversion for every Triton kernel's stores and the tiles rounded before a
matmul: the one interpreter workaround they share (docs/triton-interpreter.md), bf16 rounding to
nearest even done on the bits where the interpreter would truncate."""

import triton
import triton.language as tl


@triton.jit
def _to_out(v, dtype: tl.constexpr, SOFT_BF16: tl.constexpr):
    """fp32 -> output dtype, rounding to nearest even. The Triton interpreter truncates fp32 -> bf16
    (compiled code rounds), so under it (SOFT_BF16) the rounding is done on the bits instead."""
    if SOFT_BF16:
        u = v.to(tl.uint32, bitcast=True)
        u = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
        r = u.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        out = tl.where(v != v, v.to(tl.bfloat16), r)
    else:
        out = v.to(dtype)
    return out
