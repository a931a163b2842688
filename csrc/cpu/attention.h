// CPU attention (FlashAttention-2 style: blocked, online softmax, the score
// matrix is never materialised), forward and backward.
// attention.cpp checks arguments, validates varlen offsets, picks the ISA and
// spreads blocks over OpenMP threads; attention_<isa>.cpp hold the kernels
// (written once in attention_kernels.h).
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/attention_args.h"

namespace tforge::cpu {

// One sequence of the batch as the kernels see it: where its tokens start in
// q / k (varlen: cu_seqlens; padded: 0), its lengths, and where its rows of
// lse (and of the backward's rowsum(dO * O)) start: row i of q head h is
// lse[lse_off + h * lse_head_stride + i].
struct AttnSeq {
  int64_t q_off = 0, sq = 0, k_off = 0, sk = 0;
  int64_t lse_off = 0, lse_head_stride = 0;
};

// Block sizes shared by the dispatcher (which forms the tasks) and the kernels.
constexpr int64_t kAttnBlockQ = 64;  // query rows per block
constexpr int64_t kAttnBlockK = 64;  // keys per block
constexpr int64_t kAttnMaxHeadDim = 256;

// Per-ISA kernels. `ws` is a thread-private, 64-byte aligned workspace of
// attn_workspace_floats(head_dim, bwd, acc_rows, pack_rows) floats: acc_rows
// is the key rows of the backward's dK / dV accumulators (kAttnBlockK for
// attn_bwd_kv_block, seqlen_k for attn_bwd_head), pack_rows the key rows a
// task may pack into contiguous fp32 K and V (0 when it does not pack). For
// the kernels, batch strides are already zero in varlen mode.
#define TFORGE_ATTN_ISA_DECLS                                                                                  \
  size_t attn_workspace_floats(int64_t head_dim, bool bwd, int64_t acc_rows, int64_t pack_rows);               \
  /* out / lse for query rows [i0, i1) of q heads [h0, h1) (one kv group) of sequence b; with `pack`, the     \
     K / V rows these queries see are first copied to contiguous fp32 in ws. */                               \
  void attn_fwd_task(const AttnFwdArgs& a, const AttnSeq& s, int64_t b, int64_t h0, int64_t h1, int64_t i0,   \
                     int64_t i1, bool pack, float* ws);                                                        \
  /* delta[lse_off + h * lse_head_stride + i] = rowsum(dout * out) for all rows i of (b, h). */               \
  void attn_bwd_delta(const AttnBwdArgs& a, const AttnSeq& s, int64_t b, int64_t h, float* delta);            \
  /* Single pass: dq of the q heads of group hk and dk / dv of kv head hk, sequence b. */                     \
  void attn_bwd_head(const AttnBwdArgs& a, const AttnSeq& s, const float* delta, int64_t b, int64_t hk,       \
                     bool pack, float* ws);                                                                    \
  /* Two passes: dk / dv for keys [j0, j1) of kv head hk of sequence b (summed over the q heads of its        \
     group), and dq for query rows [i0, i1) of q head h. */                                                   \
  void attn_bwd_kv_block(const AttnBwdArgs& a, const AttnSeq& s, const float* delta, int64_t b, int64_t hk,   \
                         int64_t j0, int64_t j1, float* ws);                                                   \
  void attn_bwd_q_block(const AttnBwdArgs& a, const AttnSeq& s, const float* delta, int64_t b, int64_t h,     \
                        int64_t i0, int64_t i1, float* ws);

namespace scalar {
TFORGE_ATTN_ISA_DECLS
}  // namespace scalar
namespace avx2 {
TFORGE_ATTN_ISA_DECLS
}  // namespace avx2
#undef TFORGE_ATTN_ISA_DECLS

// Checked entry points; run on `threads` OpenMP threads.
// Forward writes out and lse. Backward writes dq, dk, dv (deterministic: no
// atomics, fixed reduction order, whatever the thread count).
void attention_fwd(const AttnFwdArgs& a, int threads);
void attention_bwd(const AttnBwdArgs& a, int threads);

}  // namespace tforge::cpu
