// Argument blocks for the attention kernels (CPU and CUDA).
//
// Layout (FlashAttention's): q [batch, seqlen_q, heads_q, head_dim],
// k/v [batch, seqlen_k, heads_k, head_dim], unit stride along head_dim, any
// other strides (in elements). heads_q is a multiple of heads_k (grouped-query:
// q head h reads kv head h / (heads_q / heads_k)).
//
// Varlen: when cu_seqlens_q / cu_seqlens_k are non-null (int32, batch + 1
// entries, cu[0] = 0, non-decreasing), sequences are packed along the token
// dimension: sequence b is tokens [cu[b], cu[b+1]) of q [total_q, heads, dim]
// (batch strides unused, seqlen_q / seqlen_k are the maxima). The CPU kernels
// reject offsets that break these rules; the CUDA kernels cannot read them
// without a sync, so each sequence is clamped to [0, total_q] / [0, total_k]
// and to the maxima instead (no access outside the tensors), and rows outside
// every clamped sequence are left as the caller initialised them (the Python
// op zero-fills varlen outputs on the GPU, as the Triton kernels do).
//
// Masking, per sequence with lengths (sq, sk) and offset = sk - sq (so causal
// aligns to the bottom-right, as FlashAttention does): query i may attend key
// j when
//   (!causal || j <= i + offset) &&
//   (window_left  < 0 || j >= i + offset - window_left) &&
//   (window_right < 0 || j <= i + offset + window_right)
// plus, if bias is non-null, score(i, j) += bias[b, h, i, j] (fp32, any
// strides, 0 for broadcast dims; -inf masks).
// A query row with no allowed key yields out = 0 and lse = -inf; its gradients are 0.
//
// lse: fp32 logsumexp of the scaled, biased scores, [batch, heads_q, seqlen_q]
// contiguous (varlen: [heads_q, total_q]).
#pragma once
#include <cstdint>

namespace tforge {

struct AttnTensor {
  const void* ptr = nullptr;
  int64_t batch_stride = 0, seq_stride = 0, head_stride = 0;  // elements
};

struct AttnOutTensor {
  void* ptr = nullptr;
  int64_t batch_stride = 0, seq_stride = 0, head_stride = 0;
};

struct AttnParams {
  int64_t batch = 0, seqlen_q = 0, seqlen_k = 0, heads_q = 0, heads_k = 0, head_dim = 0;
  const int32_t* cu_seqlens_q = nullptr;  // [batch + 1] or null
  const int32_t* cu_seqlens_k = nullptr;
  int64_t total_q = 0;                    // varlen only: rows of q / lse
  int64_t total_k = 0;                    // varlen only: rows of k / v
  float softmax_scale = 1.f;
  bool causal = false;
  int64_t window_left = -1, window_right = -1;  // -1: unbounded
  const float* bias = nullptr;                  // fp32, [batch, heads_q, seqlen_q, seqlen_k] strides below
  int64_t bias_batch_stride = 0, bias_head_stride = 0, bias_q_stride = 0, bias_k_stride = 0;
  int dtype = 0;  // tforge::DType of q, k, v, out (and dout, dq, dk, dv)
};

struct AttnFwdArgs {
  AttnParams p;
  AttnTensor q, k, v;
  AttnOutTensor out;
  float* lse = nullptr;
};

struct AttnBwdArgs {
  AttnParams p;
  AttnTensor q, k, v, out, dout;
  const float* lse = nullptr;
  AttnOutTensor dq, dk, dv;  // dk/dv have heads_k heads (summed over each q-head group)
  bool deterministic = true;
};

}  // namespace tforge
