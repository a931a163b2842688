"""tforge: fast Transformer kernels (C++ CPU, hand-written CUDA, Triton) as
PyTorch custom ops, with a pure-PyTorch reference beside each.

Public API::

    tforge.layer_norm(x, weight=None, bias=None, eps=1e-5)
    tforge.rms_norm(x, weight=None, eps=1e-6)
    tforge.add_layer_norm(x, residual, weight, bias, eps) -> (normed, x + residual)
    tforge.add_rms_norm(x, residual, weight, eps)         -> (normed, x + residual)
    tforge.attention(q, k, v, causal=False, softmax_scale=None, window=None, attn_bias=None)
    tforge.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, ...)
    tforge.attention_qkvpacked(qkv, causal=False, ...)   qkv (batch, seqlen, 3, heads, head_dim)
    tforge.attention_varlen_qkvpacked(qkv, cu_seqlens, max_seqlen, causal=False, ...)
    tforge.quantize_per_token(x) / quantize_per_channel(w) -> (int8, fp32 scales)
    tforge.int8_matmul(a, b) -> int32;  tforge.int8_linear(x_q, x_s, w_q, w_s, bias, out_dtype)
    tforge.nm_mask(scores, n=2, m=4) / pack_2to4(w) -> Sparse24Weight / unpack_2to4(packed)
    tforge.sparse24_linear(x, packed, bias=None)   2:4 sparse x @ W^T + bias
    tforge.cross_entropy(logits, target, ignore_index=-100, reduction="mean")  fused, fp32 loss
    tforge.backends()            what this build and machine offer
    tforge.use_backend(name)     context manager forcing a backend
    tforge.nn.LayerNorm / tforge.nn.RMSNorm / tforge.nn.Attention

Importing tforge loads the small native module and registers the custom ops;
Triton and transformers are imported only when used.
"""
from tforge._backend import backends, use_backend
from tforge.ops.attention import attention, attention_varlen, cu_seqlens_from_lengths
from tforge.ops.attention_qkvpacked import attention_qkvpacked, attention_varlen_qkvpacked
from tforge.ops.cross_entropy import cross_entropy
from tforge.ops.int8_gemm import int8_linear, int8_matmul, quantize_per_channel, quantize_per_token
from tforge.ops.layer_norm import add_layer_norm, layer_norm
from tforge.ops.rms_norm import add_rms_norm, rms_norm
from tforge.ops.sparse24 import (Sparse24Weight, nm_mask, pack_2to4, prune_scores, sparse24_linear,
                                 unpack_2to4, unstructured_mask)
from tforge import nn  # noqa: E402  (needs the ops above)

__version__ = "0.1.0"

__all__ = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "attention", "attention_varlen",
           "attention_qkvpacked", "attention_varlen_qkvpacked",
           "cu_seqlens_from_lengths", "quantize_per_token", "quantize_per_channel", "int8_matmul", "int8_linear",
           "Sparse24Weight", "prune_scores", "nm_mask", "unstructured_mask", "pack_2to4", "unpack_2to4",
           "sparse24_linear", "cross_entropy", "backends", "use_backend", "nn", "__version__"]
