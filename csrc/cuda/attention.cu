// Flash attention forward and backward on CUDA (sm_80, sm_90a), FlashAttention-2
// style: tiles of q / k / v staged in shared memory with cp.async (double
// buffered), operands loaded with ldmatrix, products on the tensor cores with
// mma.sync.m16n8k16 (bf16 / fp16 in, fp32 accumulate), softmax in registers.
// Semantics (layouts, varlen, GQA, masks, bias, lse): common/attention_args.h.
//
// Every CTA has 4 warps; a warp owns 16 * MT rows of its CTA's output tile and
// computes all of their columns, so scores never leave registers: the fp32
// accumulator of S = A B^T is rounded to 16 bits in place and used as the A
// operand of the next product (P V, dS K, P^T dO, dS^T Q).
//
//   attn_fwd_kernel       grid (q blocks, heads_q, batch): 128 query rows (32 per
//                         warp), loop over the key tiles of the band (64 keys;
//                         32 at head_dim 128), online softmax in base 2.
//   attn_bwd_pre_kernel   delta = rowsum(dout * out) and lse * log2(e) into the
//                         workspace (+inf for rows with lse = -inf, so that their
//                         probabilities are exp2(x - inf) = 0, never NaN); rows
//                         masked only by huge finite biases, whose lse has lost
//                         its log-sum, get their max and log2-sum recomputed and
//                         stored apart (prob_bwd).
//   attn_bwd_dq_kernel    grid (q blocks, heads_q, batch): 64 query rows, loop
//                         over 64-key tiles: S, dP = dO V^T, dS, dQ += dS K.
//   attn_bwd_dkdv_kernel  grid (key blocks, heads_k, batch): 64 keys, loop over
//                         the q heads of the GQA group and their query tiles
//                         (64 rows; 32 at head_dim 128),
//                         computing the transposed products S^T = K Q^T and
//                         dP^T = V dO^T: dV += P^T dO, dK += dS^T Q.
// No atomics anywhere, so the backward is deterministic (the key tiles of a
// row and the query tiles / q heads of a key are visited in a fixed order).
//
// Masks: a tile entirely inside every row's band (and no bias) skips the
// per-element test; tiles outside the band of the whole block are not
// visited. Rows and keys past the sequence are zero-filled in shared memory
// and never stored. The bias (fp32, any strides) is staged per warp and tile
// into shared memory with cp.async, in the same pipeline as the k / v tiles.
//
// Tile sizes are the largest that compile without register spills for both
// sm_80 and sm_90a (ptxas -v); registers run at 160-250 per thread.
//
// Shared-memory tiles are [rows][D] of 16-bit elements in 16-byte chunks, the
// chunk index XOR-swizzled by the row (swz) so that the eight 16-byte rows an
// ldmatrix phase reads, and the cp.async writes, fall in distinct bank groups.
// Loads use 16-byte cp.async when every row start is 16-byte aligned, else
// element loads (slow path for odd strides). All offsets into global memory
// are int64.
#include "cuda/attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/checks.h"
#include "common/cuda_utils.h"
#include "common/dtype.h"
#include "cuda/ptx.cuh"

namespace tforge::cuda {
namespace {

constexpr int kThreads = 128;  // 4 warps per CTA, every kernel
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int64_t kMaxSeqlen = int64_t(1) << 30;  // keeps in-sequence indices (and their sums) in int
constexpr int kMaxGridYZ = 65535;
// Finite biases are clamped to this before the log2(e) scaling, which would
// turn a finite mask value such as finfo(float32).min into -inf: a row masked
// only by such values keeps its (uniform) softmax, as in a plain fp32
// computation, instead of becoming an empty row. -inf stays -inf.
constexpr float kMinBias = -1e38f;

// ---------------------------------------------------------------------------
// --- Primitives (the PTX itself lives in cuda/ptx.cuh)

using ptx::cp_async_16;
using ptx::cp_async_4;
using ptx::cp_async_commit;
using ptx::cp_async_wait;
using ptx::ld_shared_v2f;
using ptx::ld_shared_v4;
using ptx::ldmatrix_x4;
using ptx::ldmatrix_x4_trans;
using ptx::st_shared_b32;
using ptx::st_shared_v4;

__device__ __forceinline__ uint32_t smem_base() { return ptx::smem_u32(ptx::dynamic_smem()); }

// Two floats rounded (nearest even) to T, `lo` in the low 16 bits.
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

template <class T>
__device__ __forceinline__ float elem_to_float(uint16_t bits) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __uint_as_float(static_cast<uint32_t>(bits) << 16);
  } else {
    return __half2float(__ushort_as_half(bits));
  }
}

__device__ __forceinline__ float shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
__device__ __forceinline__ void syncwarp() { __syncwarp(); }

// 2^x (ex2.approx, relative error ~2^-22); -inf -> +0.
__device__ __forceinline__ float fast_exp2(float x) { return ptx::ex2_approx_ftz(x); }

// --- Primitives (end)
// ---------------------------------------------------------------------------

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// Backward probability exp2((logit - m2) - ll2), at most 1 as in exact arithmetic.
// For most rows m2 = lse * log2(e) and ll2 = 0. A row masked only by huge finite
// biases (-1e9, finfo.min) has |lse| so large that m2 + log2(sum) rounds to m2:
// the pre kernel then stores the row's own max (m2) and log2-sum (ll2) apart,
// recomputed from its scores, so such rows get exact probabilities. The cap keeps
// exp2 of rounding errors from reaching inf (inf * 0 = NaN); NaN still propagates.
__device__ __forceinline__ float prob_bwd(float logit, float m2, float ll2) {
  const float d = (logit - m2) - ll2;
  return fast_exp2(d > 0.f ? 0.f : d);
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a [rows][8 * C] tile of
// 16-bit elements. C >= 8: chunk ^ (row % 8), so 8 consecutive rows at one
// logical chunk land in 8 distinct 16-byte bank groups; C == 4 (64-byte rows,
// two per 128-byte line): chunk ^ ((row / 2) % 4) does the same.
template <int C>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  static_assert(C == 4 || C == 8 || C == 16, "head_dim must be 32, 64 or 128");
  const int x = C == 4 ? ((row >> 1) & 3) : (row & 7);
  return static_cast<uint32_t>((row * C + (chunk ^ x)) * 16);
}

// Eight 16-bit elements from a 2-byte aligned address.
__device__ __forceinline__ uint4 ld_global_u16x8(const void* p) {
  const uint16_t* s = static_cast<const uint16_t*>(p);
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) w[i] = static_cast<uint32_t>(s[2 * i]) | (static_cast<uint32_t>(s[2 * i + 1]) << 16);
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Global -> shared tile [ROWS][8 * C]: row r from src + r * stride for r < valid,
// zeros for the rest. cp.async (the caller commits) when vec (16-byte aligned
// rows), else synchronous element loads. All threads of the CTA take part.
template <class T, int ROWS, int C>
__device__ __forceinline__ void load_tile(uint32_t dst, const T* src, int64_t stride, int valid, bool vec, int tid) {
  static_assert((ROWS * C) % kThreads == 0, "tile chunks must divide among the threads");
#pragma unroll 1  // unrolled, the address math of every chunk gets hoisted: register spills at D = 128
  for (int k = 0; k < ROWS * C / kThreads; ++k) {
    const int idx = tid + k * kThreads;
    const int r = idx / C, ch = idx % C;
    const uint32_t d = dst + swz<C>(r, ch);
    if (r < valid) {
      const T* s = src + static_cast<int64_t>(r) * stride + ch * 8;
      if (vec) {
        cp_async_16(d, s);
      } else {
        st_shared_v4(d, ld_global_u16x8(s));
      }
    } else {
      st_shared_v4(d, make_uint4(0u, 0u, 0u, 0u));
    }
  }
}

// Shared tile [ROWS][8 * C] -> global rows r < valid at dst + r * stride.
template <class T, int ROWS, int C>
__device__ __forceinline__ void store_tile(T* dst, int64_t stride, uint32_t src, int valid, bool vec, int tid) {
#pragma unroll
  for (int k = 0; k < ROWS * C / kThreads; ++k) {
    const int idx = tid + k * kThreads;
    const int r = idx / C, ch = idx % C;
    if (r < valid) {
      const uint4 v = ld_shared_v4(src + swz<C>(r, ch));
      T* d = dst + static_cast<int64_t>(r) * stride + ch * 8;
      if (vec) {
        *reinterpret_cast<uint4*>(d) = v;
      } else {
        uint16_t* e = reinterpret_cast<uint16_t*>(d);
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          e[2 * i] = static_cast<uint16_t>(w[i] & 0xffffu);
          e[2 * i + 1] = static_cast<uint16_t>(w[i] >> 16);
        }
      }
    }
  }
}

// Warp tile of fp32 accumulators (C-fragment layout, rows row0 + [0, 16 * MT),
// all 8 * C columns) -> T in a swizzled shared tile [rows][8 * C]. An n8 tile of
// the accumulator is exactly one 16-byte chunk of a row.
template <class T, int C, int MT>
__device__ __forceinline__ void stage_acc(uint32_t tile, const float (&acc)[MT][C][4], int row0, int lane) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int r = row0 + mt * 16 + (lane >> 2);
    const uint32_t off = static_cast<uint32_t>(lane & 3) * 4;
#pragma unroll
    for (int dt = 0; dt < C; ++dt) {
      st_shared_b32(tile + swz<C>(r, dt) + off, pack2<T>(acc[mt][dt][0], acc[mt][dt][1]));
      st_shared_b32(tile + swz<C>(r + 8, dt) + off, pack2<T>(acc[mt][dt][2], acc[mt][dt][3]));
    }
  }
}

// ldmatrix addresses of one operand role. Lane l reads row 16 * g + r(l) (g a
// 16-row group) at 16-byte chunk 2 * ks + hi(l). Because the XOR in swz only
// touches the low 3 bits of the chunk, and r(l)'s swizzle key is the same for
// every 16-row group, that address is
//   16 * g * 8C (row groups) + 128 * (ks / 4) (immediates) + off[ks % 4] (lane),
// so a warp GEMM needs four lane registers per role instead of one per
// (k step, tile) pair (which the compiler would otherwise hoist out of the loop).
template <int C>
struct Ldsm {
  static constexpr int K = C / 2 < 4 ? C / 2 : 4;
  uint32_t off[K];
  __device__ __forceinline__ Ldsm(int r, int hi) {
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] = swz<C>(r, 2 * k + hi);
  }
  // == swz<C>(row16 + r, 2 * ks + hi), row16 a multiple of 16.
  __device__ __forceinline__ uint32_t at(int row16, int ks) const {
    return static_cast<uint32_t>(row16 * C * 16 + (ks / 4) * 128) + off[ks % 4];
  }
};
// A operand (rows 0-7 / 8-15 of chunk 2ks, then of 2ks + 1 -> a[0..3]), and the
// transposed B operand of gemm_rs ((k 0-7, chunk 2dp), (k 8-15, 2dp), (k 0-7,
// 2dp + 1), (k 8-15, 2dp + 1)): r = l % 16, hi = l / 16.
template <int C>
__device__ __forceinline__ Ldsm<C> ldsm_a(int lane) {
  return Ldsm<C>(lane & 15, lane >> 4);
}
// B operand of gemm_nt: (n 0-7, chunk 2ks), (n 0-7, 2ks + 1), (n 8-15, 2ks), (n 8-15, 2ks + 1):
// r = l % 8 + 8 * (l / 16), hi = (l / 8) % 2.
template <int C>
__device__ __forceinline__ Ldsm<C> ldsm_b(int lane) {
  return Ldsm<C>((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
}

// acc[m][n] += sum_k A[a_row0 + m][k] * B[n][k], k over all 8 * C columns.
// A: rows a_row0 + [0, 16 * MT) (a_row0 a multiple of 16) of a swizzled [.][8C]
// tile; B: rows [0, 8 * NT) of another. Both via ldmatrix (non-transposed).
template <class T, int C, int MT, int NT>
__device__ __forceinline__ void gemm_nt(float (&acc)[MT][NT][4], uint32_t sA, int a_row0, uint32_t sB,
                                        const Ldsm<C>& la, const Ldsm<C>& lb) {
  static_assert(NT % 2 == 0, "n tiles come in pairs");
#pragma unroll
  for (int ks = 0; ks < C / 2; ++ks) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(a[mt], sA + la.at(a_row0 + mt * 16, ks));
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t bm[4];
      ldmatrix_x4(bm, sB + lb.at(np * 16, ks));
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        ptx::mma_m16n8k16<T>(acc[mt][2 * np], a[mt], bm[0], bm[1]);
        ptx::mma_m16n8k16<T>(acc[mt][2 * np + 1], a[mt], bm[2], bm[3]);
      }
    }
  }
}

// acc[m][n] += sum_k P[m][k] * B[k][n]: P as A fragments pa[MT][KS] (k in
// [0, 16 * KS)), B rows [0, 16 * KS) of a swizzled [.][8C] tile (row = k), all
// 8 * C columns; B via ldmatrix.trans with the A-role addresses (la).
template <class T, int C, int MT, int KS>
__device__ __forceinline__ void gemm_rs(float (&acc)[MT][C][4], const uint32_t (&pa)[MT][KS][4], uint32_t sB,
                                        const Ldsm<C>& la) {
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
    for (int dp = 0; dp < C / 2; ++dp) {
      uint32_t bm[4];
      ldmatrix_x4_trans(bm, sB + la.at(ks * 16, dp));
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        ptx::mma_m16n8k16<T>(acc[mt][2 * dp], pa[mt][ks], bm[0], bm[1]);
        ptx::mma_m16n8k16<T>(acc[mt][2 * dp + 1], pa[mt][ks], bm[2], bm[3]);
      }
    }
  }
}

// C fragments of a 16 x 8NT fp32 tile -> A fragments of the same tile in T
// (k step ks = columns 16ks..16ks+15 = n tiles 2ks, 2ks + 1).
template <class T, int MT, int NT>
__device__ __forceinline__ void to_a_frags(uint32_t (&pa)[MT][NT / 2][4], const float (&s)[MT][NT][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int ks = 0; ks < NT / 2; ++ks) {
      pa[mt][ks][0] = pack2<T>(s[mt][2 * ks][0], s[mt][2 * ks][1]);
      pa[mt][ks][1] = pack2<T>(s[mt][2 * ks][2], s[mt][2 * ks][3]);
      pa[mt][ks][2] = pack2<T>(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
      pa[mt][ks][3] = pack2<T>(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
    }
  }
}

template <int MT, int N>
__device__ __forceinline__ void zero_acc(float (&a)[MT][N][4]) {
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) a[i][j][e] = 0.f;
}

// ---------------------------------------------------------------------------
// Problem description shared by the kernels

struct TView {  // one of q, k, v, out, dout: element strides
  const void* p;
  int64_t b, s, h;
};
struct OView {  // out, dq, dk, dv
  void* p;
  int64_t b, s, h;
};

struct Common {
  const int32_t* cu_q;  // [batch + 1] or null (then cu_k is null too)
  const int32_t* cu_k;
  int seqlen_q, seqlen_k;  // per sequence, or the maxima (varlen)
  int heads_q, group;      // group = heads_q / heads_k
  int64_t total_q;         // varlen: rows of q / lse
  int64_t total_k;         // varlen: rows of k / v
  int batch_base;          // added to blockIdx.z (batches beyond gridDim.z's limit)
  int left, right;         // window, -1 unbounded; causal folded into right = 0
  float scale_log2;        // softmax_scale * log2(e)
  float scale;             // softmax_scale
  const float* bias;       // [batch, heads_q, seqlen_q, seqlen_k] strides below, or null
  int64_t bias_b, bias_h, bias_q, bias_k;
  bool vec;  // every row start of every 16-bit tensor is 16-byte aligned
};

struct Seq {
  int64_t q_start, k_start;  // first token (varlen), else 0
  int sq, sk;
};

__device__ __forceinline__ Seq seq_of(const Common& c, int b) {
  Seq s;
  if (c.cu_q != nullptr) {
    // Offsets are not validated on the GPU (no sync): clamp so that a bad cu_seqlens can only give
    // wrong rows, never an access outside q / k / v / out (attention_args.h).
    auto clamp = [](int64_t v, int64_t hi) { return v < 0 ? int64_t(0) : (v > hi ? hi : v); };
    const int64_t q0 = clamp(c.cu_q[b], c.total_q), q1 = clamp(c.cu_q[b + 1], c.total_q);
    const int64_t k0 = clamp(c.cu_k[b], c.total_k), k1 = clamp(c.cu_k[b + 1], c.total_k);
    s.q_start = q0;
    s.k_start = k0;
    s.sq = static_cast<int>(clamp(q1 - q0, c.seqlen_q));
    s.sk = static_cast<int>(clamp(k1 - k0, c.seqlen_k));
  } else {
    s.q_start = 0;
    s.k_start = 0;
    s.sq = c.seqlen_q;
    s.sk = c.seqlen_k;
  }
  return s;
}

// Row 0 of head h of sequence b of a [batch, seq, heads, D] (or packed) tensor.
template <class T>
__device__ __forceinline__ const T* head_ptr(const TView& t, const Common& c, int b, int64_t start, int h) {
  return static_cast<const T*>(t.p) + (c.cu_q != nullptr ? start * t.s : static_cast<int64_t>(b) * t.b) +
         static_cast<int64_t>(h) * t.h;
}
template <class T>
__device__ __forceinline__ T* head_ptr(const OView& t, const Common& c, int b, int64_t start, int h) {
  return static_cast<T*>(t.p) + (c.cu_q != nullptr ? start * t.s : static_cast<int64_t>(b) * t.b) +
         static_cast<int64_t>(h) * t.h;
}

// Index of row 0 of (b, h) in lse-layout arrays: [batch, heads_q, seqlen_q], varlen [heads_q, total_q].
__device__ __forceinline__ int64_t stats_base(const Common& c, int b, int h, int64_t q_start) {
  return c.cu_q != nullptr ? static_cast<int64_t>(h) * c.total_q + q_start
                           : (static_cast<int64_t>(b) * c.heads_q + h) * c.seqlen_q;
}

// Offset of bias[b, h, i, j].
__device__ __forceinline__ int64_t bias_offset(const Common& c, int b, int h, int i, int j) {
  return static_cast<int64_t>(b) * c.bias_b + static_cast<int64_t>(h) * c.bias_h + static_cast<int64_t>(i) * c.bias_q +
         static_cast<int64_t>(j) * c.bias_k;
}

// The band of allowed (query i, key j) of one sequence (attention_args.h):
// i + off - left <= j <= i + off + right, 0 <= j < sk, 0 <= i < sq; bounds
// clamped, so an empty range has lo > hi.
struct Band {
  int64_t off;  // sk - sq
  int sq, sk, left, right;
  __device__ __forceinline__ Band(const Seq& s, const Common& c)
      : off(static_cast<int64_t>(s.sk) - s.sq), sq(s.sq), sk(s.sk), left(c.left), right(c.right) {}
  __device__ __forceinline__ static int clamp(int64_t v, int lo, int hi) {
    return v < lo ? lo : (v > hi ? hi : static_cast<int>(v));
  }
  // keys of query i: [key_lo, key_hi]
  __device__ __forceinline__ int key_lo(int i) const { return left < 0 ? 0 : clamp(i + off - left, 0, sk); }
  __device__ __forceinline__ int key_hi(int i) const {
    return right < 0 ? sk - 1 : clamp(i + off + right, -1, sk - 1);
  }
  // queries of key j: [q_lo, q_hi]
  __device__ __forceinline__ int q_lo(int j) const { return right < 0 ? 0 : clamp(j - off - right, 0, sq); }
  __device__ __forceinline__ int q_hi(int j) const { return left < 0 ? sq - 1 : clamp(j - off + left, -1, sq - 1); }
};

// Range of key tiles [t_begin, t_end) a query block [m0, m_last] visits, and
// the keys [full_lo, full_hi] every one of its rows may attend.
struct TileRange {
  int t_begin, t_end, full_lo, full_hi;
};
__device__ __forceinline__ TileRange key_tiles(const Band& band, int m0, int m_last, int bn) {
  TileRange r;
  const int j_begin = band.key_lo(m0), j_end = band.key_hi(m_last) + 1;  // key_lo, key_hi: non-decreasing in i
  r.t_begin = j_begin / bn;
  r.t_end = j_end > j_begin ? (j_end + bn - 1) / bn : r.t_begin;
  r.full_lo = band.key_lo(m_last);
  r.full_hi = band.key_hi(m0);
  return r;
}

// Bias staging. A warp's bias values for one tile (R fragment rows x NC
// fragment columns, fp32) go to a warp-private shared tile with row stride
// NC + 8 floats, so the float2 reads in fragment layout (8 rows x 4 column
// pairs per phase) are conflict-free. Element (r, c) comes from
// src[r * s_r + c * s_c] when r < nr and c < nc, else 0 (masked anyway).
// The copies are cp.async: the caller commits, waits and __syncwarps.
// COLS_FAST: lanes run along c (global memory contiguous along c), else along r.
template <int R, int NC>
struct BiasTile {
  static constexpr int kStride = NC + 8;
  static constexpr int kBytes = R * kStride * 4;  // per warp
};
template <int R, int NC, bool COLS_FAST>
__device__ __forceinline__ void load_bias(uint32_t dst, const float* src, int64_t s_r, int64_t s_c, int nr, int nc,
                                          int lane) {
  constexpr int S = BiasTile<R, NC>::kStride;
  if constexpr (COLS_FAST) {
    static_assert(NC % 32 == 0, "");
#pragma unroll 4
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int c = lane; c < NC; c += 32) {
        const uint32_t d = dst + static_cast<uint32_t>(r * S + c) * 4;
        if (r < nr && c < nc) {
          cp_async_4(d, src + static_cast<int64_t>(r) * s_r + static_cast<int64_t>(c) * s_c);
        } else {
          st_shared_b32(d, 0u);
        }
      }
    }
  } else {
    static_assert(R == 16 && NC % 2 == 0, "");
    const int r = lane & 15;
#pragma unroll 4
    for (int c = lane >> 4; c < NC; c += 2) {
      const uint32_t d = dst + static_cast<uint32_t>(r * S + c) * 4;
      if (r < nr && c < nc) {
        cp_async_4(d, src + static_cast<int64_t>(r) * s_r + static_cast<int64_t>(c) * s_c);
      } else {
        st_shared_b32(d, 0u);
      }
    }
  }
}
__device__ __forceinline__ float clamp_bias(float v) {
  return v < kMinBias && v != -INFINITY ? kMinBias : v;
}
// This thread's two bias values at fragment row fr, columns fc, fc + 1 (fc even), clamped.
template <int NC>
__device__ __forceinline__ float2 bias_at(uint32_t tile, int fr, int fc) {
  const float2 v = ld_shared_v2f(tile + static_cast<uint32_t>(fr * (NC + 8) + fc) * 4);
  return make_float2(clamp_bias(v.x), clamp_bias(v.y));
}

// Scores of a warp's query rows -> base-2 logits: s * scale_log2 (+ bias *
// log2(e)), -inf outside each row's band (rows past the sequence: all -inf).
// The thread's rows are row_g + 16 * mt + 8 * half, its columns
// n0 + 8 * nt + 2 * (lane % 4) + {0, 1}. full: the tile lies inside every row's
// band and there is no bias. bias_tile: the warp's staged bias (rows from
// row_g - lane / 4, columns from n0), when has_bias.
template <int MT, int NT>
__device__ __forceinline__ void logits_rows(float (&s)[MT][NT][4], bool full, int n0, const Band& band,
                                            float scale_log2, bool has_bias, uint32_t bias_tile, int row_g,
                                            int lane) {
  if (full) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] *= scale_log2;
    return;
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = row_g + mt * 16 + half * 8;
      const bool in = i < band.sq;
      const int lo = in ? band.key_lo(i) : 1, hi = in ? band.key_hi(i) : 0;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int fc = nt * 8 + 2 * (lane & 3);
        float2 bv = make_float2(0.f, 0.f);
        if (has_bias) bv = bias_at<8 * NT>(bias_tile, mt * 16 + half * 8 + (lane >> 2), fc);
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int j = n0 + fc + q;
          const float x = fmaf(q ? bv.y : bv.x, kLog2e, s[mt][nt][2 * half + q] * scale_log2);
          s[mt][nt][2 * half + q] = (j < lo || j > hi) ? -INFINITY : x;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Forward

template <int D>
struct FwdCfg {
  static constexpr int C = D / 8;          // 16-byte chunks per row
  static constexpr int MT = 2;             // m16 tiles per warp
  static constexpr int BM = 4 * 16 * MT;   // query rows per CTA
  static constexpr int BN = D == 128 ? 32 : 64;  // keys per tile (64 spills at D = 128)
  static constexpr int kQBytes = BM * D * 2;
  static constexpr int kKVBytes = BN * D * 2;
  static constexpr int kSmem = kQBytes + 4 * kKVBytes;  // Q, K x2, V x2
  using Bias = BiasTile<16 * MT, BN>;                   // then, with a bias, one tile per warp
  static constexpr int kSmemBias = kSmem + 4 * Bias::kBytes;
};

struct FwdParams {
  Common c;
  TView q, k, v;  // q [.., heads_q, D], k / v [.., heads_k, D]
  OView o;        // [.., heads_q, D]
  float* lse;     // lse layout
};

template <class T, int D>
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel(const FwdParams p) {
  using Cfg = FwdCfg<D>;
  constexpr int C = Cfg::C, MT = Cfg::MT, BM = Cfg::BM, BN = Cfg::BN, NT = BN / 8;
  const Common& c = p.c;
  const int b = static_cast<int>(blockIdx.z) + c.batch_base;
  const int h = static_cast<int>(blockIdx.y);
  const int m0 = (static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x)) * BM;  // longest rows first
  const Seq s = seq_of(c, b);
  if (m0 >= s.sq) return;  // whole CTA

  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const Ldsm<C> la = ldsm_a<C>(lane), lb = ldsm_b<C>(lane);
  const int hk = h / c.group;
  const T* qp = head_ptr<T>(p.q, c, b, s.q_start, h);
  const T* kp = head_ptr<T>(p.k, c, b, s.k_start, hk);
  const T* vp = head_ptr<T>(p.v, c, b, s.k_start, hk);
  const Band band(s, c);
  const int m_last = imin(m0 + BM, s.sq) - 1;
  const TileRange tr = key_tiles(band, m0, m_last, BN);
  const bool has_bias = c.bias != nullptr;
  // This thread's rows: m0 + wrow + 16 * mt + 8 * half + lane / 4, index r = 2 * mt + half.
  const int wrow = warp * 16 * MT;
  const int row_g = m0 + wrow + (lane >> 2);

  const uint32_t sQ = smem_base();
  const uint32_t sK = sQ + Cfg::kQBytes;
  const uint32_t sV = sK + 2 * Cfg::kKVBytes;
  const uint32_t sB = sV + 2 * Cfg::kKVBytes + warp * Cfg::Bias::kBytes;  // with a bias only
  auto load_kv = [&](int t, int stage) {
    const int n0 = t * BN;
    load_tile<T, BN, C>(sK + stage * Cfg::kKVBytes, kp + static_cast<int64_t>(n0) * p.k.s, p.k.s, s.sk - n0, c.vec,
                        tid);
    load_tile<T, BN, C>(sV + stage * Cfg::kKVBytes, vp + static_cast<int64_t>(n0) * p.v.s, p.v.s, s.sk - n0, c.vec,
                        tid);
  };
  load_tile<T, BM, C>(sQ, qp + static_cast<int64_t>(m0) * p.q.s, p.q.s, s.sq - m0, c.vec, tid);
  cp_async_commit();
  if (tr.t_begin < tr.t_end) load_kv(tr.t_begin, 0);
  cp_async_commit();

  float m_run[2 * MT], l_run[2 * MT];  // running max (base-2 logits), this thread's partial row sums
#pragma unroll
  for (int r = 0; r < 2 * MT; ++r) {
    m_run[r] = -INFINITY;
    l_run[r] = 0.f;
  }
  float acc[MT][C][4];
  zero_acc(acc);

  // cp.async groups per iteration t, always committed (possibly empty) so the
  // waits count the same way: [bias of t] [K, V of t + 1].
  for (int t = tr.t_begin; t < tr.t_end; ++t) {
    const int stage = (t - tr.t_begin) & 1;
    const int n0 = t * BN;
    if (has_bias) {  // the warp's previous bias tile was read before the last barrier
      const int r0 = m0 + wrow;
      load_bias<16 * MT, BN, true>(sB, c.bias + bias_offset(c, b, h, r0, n0), c.bias_q, c.bias_k, s.sq - r0,
                                   s.sk - n0, lane);
    }
    cp_async_commit();
    if (t + 1 < tr.t_end) load_kv(t + 1, stage ^ 1);  // last read before the previous iteration's closing barrier
    cp_async_commit();
    cp_async_wait<2>();  // Q and K, V of t
    __syncthreads();

    float sc[MT][NT][4];
    zero_acc(sc);
    gemm_nt<T, C, MT, NT>(sc, sQ, wrow, sK + stage * Cfg::kKVBytes, la, lb);
    if (has_bias) {
      cp_async_wait<1>();  // this thread's bias copies
      syncwarp();          // and the other lanes'
    }
    const bool full = !has_bias && n0 >= tr.full_lo && n0 + BN - 1 <= tr.full_hi;
    logits_rows<MT, NT>(sc, full, n0, band, c.scale_log2, has_bias, sB, row_g, lane);

    // Online softmax. A row whose max is still -inf (nothing allowed yet) uses 0 as
    // its reference, so exp2(-inf - 0) = 0 instead of NaN.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = 2 * mt + half;
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(sc[mt][nt][2 * half], sc[mt][nt][2 * half + 1]));
        mx = fmaxf(mx, shfl_xor(mx, 1));  // the 4 lanes of a quad share a row
        mx = fmaxf(mx, shfl_xor(mx, 2));
        const float m_new = fmaxf(m_run[r], mx);
        const float m_ref = m_new == -INFINITY ? 0.f : m_new;
        const float alpha = fast_exp2(m_run[r] - m_ref);  // 0 while m_run is -inf
        m_run[r] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
          for (int e = 2 * half; e < 2 * half + 2; ++e) {
            const float pe = fast_exp2(sc[mt][nt][e] - m_ref);
            sc[mt][nt][e] = pe;
            sum += pe;
          }
        }
        l_run[r] = l_run[r] * alpha + sum;
#pragma unroll
        for (int dt = 0; dt < C; ++dt) {
          acc[mt][dt][2 * half] *= alpha;
          acc[mt][dt][2 * half + 1] *= alpha;
        }
      }
    }

    uint32_t pa[MT][NT / 2][4];
    to_a_frags<T, MT, NT>(pa, sc);
    gemm_rs<T, C, MT, NT / 2>(acc, pa, sV + stage * Cfg::kKVBytes, la);
    __syncthreads();  // stage is refilled by the next-but-one iteration
  }

  // Normalise; lse = m * ln2 + ln(l). An empty row (l == 0) gives out 0, lse -inf.
  float* lse = p.lse + stats_base(c, b, h, s.q_start);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = 2 * mt + half;
      float l = l_run[r];
      l += shfl_xor(l, 1);
      l += shfl_xor(l, 2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
      for (int dt = 0; dt < C; ++dt) {
        acc[mt][dt][2 * half] *= inv;
        acc[mt][dt][2 * half + 1] *= inv;
      }
      const int i = row_g + mt * 16 + half * 8;
      if ((lane & 3) == 0 && i < s.sq) lse[i] = l > 0.f ? m_run[r] * kLn2 + logf(l) : -INFINITY;
    }
  }

  // Stage O through sQ for 16-byte stores. The barrier also covers the Q copy
  // when no key tile was visited (its cp.async group was never waited on).
  cp_async_wait<0>();
  __syncthreads();
  stage_acc<T, C, MT>(sQ, acc, wrow, lane);
  __syncthreads();
  store_tile<T, BM, C>(head_ptr<T>(p.o, c, b, s.q_start, h) + static_cast<int64_t>(m0) * p.o.s, p.o.s, sQ,
                       s.sq - m0, c.vec, tid);
}

// ---------------------------------------------------------------------------
// Backward

struct BwdParams {
  Common c;
  TView q, k, v, o, dout;  // q, o, dout [.., heads_q, D]; k, v [.., heads_k, D]
  OView dq, dk, dv;        // dq [.., heads_q, D]; dk, dv [.., heads_k, D]
  const float* lse;        // lse layout (caller's)
  float* lse2;             // workspace, lse layout: lse * log2(e) (+inf where lse = -inf), or the row max
  float* delta;            // workspace, lse layout: rowsum(dout * out)
  float* ll2;              // workspace, lse layout: 0, or log2 of the row's sum (rows with |lse2| > kHugeLse2)
  int head_dim;
};

constexpr int kPreRows = 64;  // query rows per CTA of the preprocess kernel
// |lse * log2(e)| beyond which log2 of a row's sum (up to log2(2^30)) is lost to rounding.
constexpr float kHugeLse2 = 1024.f;

// Max (m2) and log2-sum (ll2) of the base-2 logits of query row i, recomputed by one warp
// (lanes along head_dim) with the dq / dk-dv kernels' logit formula: only for rows whose lse
// has lost its log-sum (masked by huge finite biases); rare, so a plain loop over the keys.
template <class T>
__device__ __noinline__ void row_max_logsum(const BwdParams& p, const Seq& s, int b, int h, int i, int lane,
                                            float& m2, float& ll2) {
  const Common& c = p.c;
  const Band band(s, c);
  const int lo = band.key_lo(i), hi = band.key_hi(i);
  const uint16_t* qrow = reinterpret_cast<const uint16_t*>(head_ptr<T>(p.q, c, b, s.q_start, h)) +
                         static_cast<int64_t>(i) * p.q.s;
  const uint16_t* kp = reinterpret_cast<const uint16_t*>(head_ptr<T>(p.k, c, b, s.k_start, h / c.group));
  float m = -INFINITY, sum = 0.f;
  for (int j = lo; j <= hi; ++j) {  // warp-uniform
    const uint16_t* krow = kp + static_cast<int64_t>(j) * p.k.s;
    float dot = 0.f;
    for (int d = lane; d < p.head_dim; d += 32) dot = fmaf(elem_to_float<T>(qrow[d]), elem_to_float<T>(krow[d]), dot);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) dot += shfl_xor(dot, o);
    float x = dot * c.scale_log2;
    if (c.bias != nullptr) x = fmaf(clamp_bias(c.bias[bias_offset(c, b, h, i, j)]), kLog2e, x);
    if (x == -INFINITY) continue;  // masked by the bias
    if (x > m) {
      sum = sum * fast_exp2(m - x) + 1.f;
      m = x;
    } else {
      sum += fast_exp2(x - m);
    }
  }
  if (m != -INFINITY) {
    m2 = m;
    ll2 = log2f(sum);
  }
}

// grid (ceil(seqlen_q / 64), heads_q, batch): a warp per row, lanes along head_dim.
template <class T>
__global__ void __launch_bounds__(kThreads) attn_bwd_pre_kernel(const BwdParams p) {
  const Common& c = p.c;
  const int b = static_cast<int>(blockIdx.z) + c.batch_base;
  const int h = static_cast<int>(blockIdx.y);
  const int m0 = static_cast<int>(blockIdx.x) * kPreRows;
  const Seq s = seq_of(c, b);
  if (m0 >= s.sq) return;
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const uint16_t* op = reinterpret_cast<const uint16_t*>(head_ptr<T>(p.o, c, b, s.q_start, h));
  const uint16_t* dp = reinterpret_cast<const uint16_t*>(head_ptr<T>(p.dout, c, b, s.q_start, h));
  const int64_t base = stats_base(c, b, h, s.q_start);
  for (int r = warp; r < kPreRows; r += kThreads / 32) {
    const int i = m0 + r;
    if (i >= s.sq) break;  // warp-uniform
    const uint16_t* orow = op + static_cast<int64_t>(i) * p.o.s;
    const uint16_t* drow = dp + static_cast<int64_t>(i) * p.dout.s;
    float acc = 0.f;
    for (int d = lane; d < p.head_dim; d += 32) acc = fmaf(elem_to_float<T>(orow[d]), elem_to_float<T>(drow[d]), acc);
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) acc += shfl_xor(acc, m);
    const float l = p.lse[base + i];
    float m2 = l == -INFINITY ? INFINITY : l * kLog2e, ll2 = 0.f;
    if (fabsf(m2) > kHugeLse2 && m2 != INFINITY) row_max_logsum<T>(p, s, b, h, i, lane, m2, ll2);
    if (lane == 0) {
      p.delta[base + i] = acc;
      p.lse2[base + i] = m2;
      p.ll2[base + i] = ll2;
    }
  }
}

template <int D>
struct DqCfg {
  static constexpr int C = D / 8;
  static constexpr int BM = 64;  // query rows per CTA (16 per warp)
  static constexpr int BN = 64;  // keys per tile
  static constexpr int kRowBytes = BM * D * 2;
  static constexpr int kKVBytes = BN * D * 2;
  static constexpr int kSmem = 2 * kRowBytes + 4 * kKVBytes;  // Q, dO, K x2, V x2
  using Bias = BiasTile<16, BN>;
  static constexpr int kSmemBias = kSmem + 4 * Bias::kBytes;
};

// grid (ceil(seqlen_q / 64), heads_q, batch).
template <class T, int D>
__global__ void __launch_bounds__(kThreads) attn_bwd_dq_kernel(const BwdParams p) {
  using Cfg = DqCfg<D>;
  constexpr int C = Cfg::C, BM = Cfg::BM, BN = Cfg::BN, NT = BN / 8;
  const Common& c = p.c;
  const int b = static_cast<int>(blockIdx.z) + c.batch_base;
  const int h = static_cast<int>(blockIdx.y);
  const int m0 = (static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x)) * BM;
  const Seq s = seq_of(c, b);
  if (m0 >= s.sq) return;

  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const Ldsm<C> la = ldsm_a<C>(lane), lb = ldsm_b<C>(lane);
  const int hk = h / c.group;
  const T* qp = head_ptr<T>(p.q, c, b, s.q_start, h);
  const T* dop = head_ptr<T>(p.dout, c, b, s.q_start, h);
  const T* kp = head_ptr<T>(p.k, c, b, s.k_start, hk);
  const T* vp = head_ptr<T>(p.v, c, b, s.k_start, hk);
  const Band band(s, c);
  const int m_last = imin(m0 + BM, s.sq) - 1;
  const TileRange tr = key_tiles(band, m0, m_last, BN);
  const bool has_bias = c.bias != nullptr;
  const int wrow = warp * 16;
  const int row_g = m0 + wrow + (lane >> 2);

  const uint32_t sQ = smem_base();
  const uint32_t sdO = sQ + Cfg::kRowBytes;
  const uint32_t sK = sdO + Cfg::kRowBytes;
  const uint32_t sV = sK + 2 * Cfg::kKVBytes;
  const uint32_t sB = sV + 2 * Cfg::kKVBytes + warp * Cfg::Bias::kBytes;  // with a bias only
  auto load_kv = [&](int t, int stage) {
    const int n0 = t * BN;
    load_tile<T, BN, C>(sK + stage * Cfg::kKVBytes, kp + static_cast<int64_t>(n0) * p.k.s, p.k.s, s.sk - n0, c.vec,
                        tid);
    load_tile<T, BN, C>(sV + stage * Cfg::kKVBytes, vp + static_cast<int64_t>(n0) * p.v.s, p.v.s, s.sk - n0, c.vec,
                        tid);
  };
  load_tile<T, BM, C>(sQ, qp + static_cast<int64_t>(m0) * p.q.s, p.q.s, s.sq - m0, c.vec, tid);
  load_tile<T, BM, C>(sdO, dop + static_cast<int64_t>(m0) * p.dout.s, p.dout.s, s.sq - m0, c.vec, tid);
  cp_async_commit();
  if (tr.t_begin < tr.t_end) load_kv(tr.t_begin, 0);
  cp_async_commit();

  const int64_t sbase = stats_base(c, b, h, s.q_start);
  float lse2[2], ll2[2], dlt[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row_g + r * 8;
    const bool in = i < s.sq;
    lse2[r] = in ? p.lse2[sbase + i] : INFINITY;  // +inf: probabilities 0
    ll2[r] = in ? p.ll2[sbase + i] : 0.f;
    dlt[r] = in ? p.delta[sbase + i] : 0.f;
  }

  float acc[1][C][4];
  zero_acc(acc);
  for (int t = tr.t_begin; t < tr.t_end; ++t) {  // cp.async groups as in attn_fwd_kernel
    const int stage = (t - tr.t_begin) & 1;
    const int n0 = t * BN;
    if (has_bias) {
      const int r0 = m0 + wrow;
      load_bias<16, BN, true>(sB, c.bias + bias_offset(c, b, h, r0, n0), c.bias_q, c.bias_k, s.sq - r0, s.sk - n0,
                              lane);
    }
    cp_async_commit();
    if (t + 1 < tr.t_end) load_kv(t + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<2>();
    __syncthreads();

    const uint32_t sKt = sK + stage * Cfg::kKVBytes;
    float sc[1][NT][4], dp[1][NT][4];
    zero_acc(sc);
    zero_acc(dp);
    gemm_nt<T, C, 1, NT>(sc, sQ, wrow, sKt, la, lb);
    gemm_nt<T, C, 1, NT>(dp, sdO, wrow, sV + stage * Cfg::kKVBytes, la, lb);
    if (has_bias) {
      cp_async_wait<1>();
      syncwarp();
    }
    const bool full = !has_bias && n0 >= tr.full_lo && n0 + BN - 1 <= tr.full_hi;
    logits_rows<1, NT>(sc, full, n0, band, c.scale_log2, has_bias, sB, row_g, lane);
    // dS = P * (dP - delta), P = exp2(logit - lse2)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pr = prob_bwd(sc[0][nt][e], lse2[e >> 1], ll2[e >> 1]);
        sc[0][nt][e] = pr * (dp[0][nt][e] - dlt[e >> 1]);
      }
    }
    uint32_t pa[1][NT / 2][4];
    to_a_frags<T, 1, NT>(pa, sc);
    gemm_rs<T, C, 1, NT / 2>(acc, pa, sKt, la);
    __syncthreads();
  }

#pragma unroll
  for (int dt = 0; dt < C; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[0][dt][e] *= c.scale;
  cp_async_wait<0>();
  __syncthreads();
  stage_acc<T, C, 1>(sQ, acc, wrow, lane);
  __syncthreads();
  store_tile<T, BM, C>(head_ptr<T>(p.dq, c, b, s.q_start, h) + static_cast<int64_t>(m0) * p.dq.s, p.dq.s, sQ,
                       s.sq - m0, c.vec, tid);
}

template <int D>
struct DkvCfg {
  static constexpr int C = D / 8;
  static constexpr int BN = 64;                   // keys per CTA (16 per warp)
  static constexpr int BM = D == 128 ? 32 : 64;  // query rows per step (64 spills at D = 128)
  static constexpr int kKVBytes = BN * D * 2;
  static constexpr int kRowBytes = BM * D * 2;
  static constexpr int kStatBytes = BM * 4;
  // K, V, then per stage: Q, dO; then per stage: lse2, delta, ll2
  static constexpr int kSmem = 2 * kKVBytes + 4 * kRowBytes + 6 * kStatBytes;
  using Bias = BiasTile<16, BM>;  // [key][query]
  static constexpr int kSmemBias = kSmem + 4 * Bias::kBytes;
};

// grid (ceil(seqlen_k / 64), heads_k, batch).
template <class T, int D>
__global__ void __launch_bounds__(kThreads) attn_bwd_dkdv_kernel(const BwdParams p) {
  using Cfg = DkvCfg<D>;
  constexpr int C = Cfg::C, BN = Cfg::BN, BM = Cfg::BM, NT = BM / 8;
  const Common& c = p.c;
  const int b = static_cast<int>(blockIdx.z) + c.batch_base;
  const int hk = static_cast<int>(blockIdx.y);
  const int n0 = static_cast<int>(blockIdx.x) * BN;
  const Seq s = seq_of(c, b);
  if (n0 >= s.sk) return;

  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const Ldsm<C> la = ldsm_a<C>(lane), lb = ldsm_b<C>(lane);
  const int G = c.group;
  const Band band(s, c);
  const int n_last = imin(n0 + BN, s.sk) - 1;
  // Queries some key of the block attends (q_lo, q_hi: non-decreasing in j), and
  // those every key attends.
  const int i_begin = band.q_lo(n0), i_end = band.q_hi(n_last) + 1;
  const int mb_begin = i_begin / BM;
  const int nmb = i_end > i_begin ? (i_end + BM - 1) / BM - mb_begin : 0;
  const int full_lo = band.q_lo(n_last), full_hi = band.q_hi(n0);
  const int n_it = G * nmb;  // (q head, query tile) steps, head-major

  const uint32_t sK = smem_base();
  const uint32_t sV = sK + Cfg::kKVBytes;
  const uint32_t sQ = sV + Cfg::kKVBytes;          // [2] stages
  const uint32_t sdO = sQ + 2 * Cfg::kRowBytes;    // [2]
  const uint32_t sL = sdO + 2 * Cfg::kRowBytes;    // [2] lse2 of the tile's rows
  const uint32_t sDl = sL + 2 * Cfg::kStatBytes;   // [2] delta
  const uint32_t sLl = sDl + 2 * Cfg::kStatBytes;  // [2] ll2
  const uint32_t sB = sLl + 2 * Cfg::kStatBytes + warp * Cfg::Bias::kBytes;  // with a bias only
  const bool has_bias = c.bias != nullptr;

  load_tile<T, BN, C>(sK, head_ptr<T>(p.k, c, b, s.k_start, hk) + static_cast<int64_t>(n0) * p.k.s, p.k.s,
                      s.sk - n0, c.vec, tid);
  load_tile<T, BN, C>(sV, head_ptr<T>(p.v, c, b, s.k_start, hk) + static_cast<int64_t>(n0) * p.v.s, p.v.s,
                      s.sk - n0, c.vec, tid);
  cp_async_commit();

  auto load_q = [&](int it, int stage) {
    const int h = hk * G + it / nmb;
    const int m0 = (mb_begin + it % nmb) * BM;
    const T* qp = head_ptr<T>(p.q, c, b, s.q_start, h) + static_cast<int64_t>(m0) * p.q.s;
    const T* dop = head_ptr<T>(p.dout, c, b, s.q_start, h) + static_cast<int64_t>(m0) * p.dout.s;
    load_tile<T, BM, C>(sQ + stage * Cfg::kRowBytes, qp, p.q.s, s.sq - m0, c.vec, tid);
    load_tile<T, BM, C>(sdO + stage * Cfg::kRowBytes, dop, p.dout.s, s.sq - m0, c.vec, tid);
    const int64_t sbase = stats_base(c, b, h, s.q_start);
    for (int idx = tid; idx < 3 * BM; idx += kThreads) {
      const int which = idx / BM, r = idx % BM, i = m0 + r;  // which: lse2, delta, ll2
      const uint32_t dst = (which == 0 ? sL : which == 1 ? sDl : sLl) + stage * Cfg::kStatBytes + r * 4;
      if (i < s.sq) {
        cp_async_4(dst, (which == 0 ? p.lse2 : which == 1 ? p.delta : p.ll2) + sbase + i);
      } else {
        st_shared_b32(dst, which == 0 ? 0x7f800000u : 0u);  // lse2 +inf, delta and ll2 0
      }
    }
  };
  if (n_it > 0) load_q(0, 0);
  cp_async_commit();

  // This thread's keys: n0 + wrow + lane / 4 + 8 * r.
  const int wrow = warp * 16;
  const int key_g = n0 + wrow + (lane >> 2);
  int qlo[2], qhi[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = key_g + 8 * r;
    qlo[r] = j < s.sk ? band.q_lo(j) : 1;  // keys past the sequence: nothing
    qhi[r] = j < s.sk ? band.q_hi(j) : 0;
  }

  float dk[1][C][4], dv[1][C][4];
  zero_acc(dk);
  zero_acc(dv);
  for (int it = 0; it < n_it; ++it) {  // cp.async groups: [bias of it] [Q, dO, stats of it + 1]
    const int stage = it & 1;
    const int h = hk * G + it / nmb;
    const int m0 = (mb_begin + it % nmb) * BM;
    if (has_bias) {  // [key][query] = bias[.., query, key]: lanes along keys
      const int k0 = n0 + wrow;
      load_bias<16, BM, false>(sB, c.bias + bias_offset(c, b, h, m0, k0), c.bias_k, c.bias_q, s.sk - k0, s.sq - m0,
                               lane);
    }
    cp_async_commit();
    if (it + 1 < n_it) load_q(it + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<2>();
    __syncthreads();

    const uint32_t sQt = sQ + stage * Cfg::kRowBytes, sdOt = sdO + stage * Cfg::kRowBytes;
    float st[1][NT][4], dpt[1][NT][4];  // S^T, dP^T: [key][query]
    zero_acc(st);
    zero_acc(dpt);
    gemm_nt<T, C, 1, NT>(st, sK, wrow, sQt, la, lb);
    gemm_nt<T, C, 1, NT>(dpt, sV, wrow, sdOt, la, lb);
    if (has_bias) {
      cp_async_wait<1>();
      syncwarp();
    }

    const bool full = !has_bias && m0 >= full_lo && m0 + BM - 1 <= full_hi;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int col = nt * 8 + 2 * (lane & 3);  // query m0 + col (+1)
      const float2 l2 = ld_shared_v2f(sL + stage * Cfg::kStatBytes + col * 4);
      const float2 dl = ld_shared_v2f(sDl + stage * Cfg::kStatBytes + col * 4);
      const float2 ll = ld_shared_v2f(sLl + stage * Cfg::kStatBytes + col * 4);
      float2 bv[2] = {make_float2(0.f, 0.f), make_float2(0.f, 0.f)};
      if (has_bias) {
        bv[0] = bias_at<BM>(sB, lane >> 2, col);
        bv[1] = bias_at<BM>(sB, (lane >> 2) + 8, col);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const int i = m0 + col + (e & 1);
        float x = st[0][nt][e] * c.scale_log2;
        if (!full) {
          x = fmaf((e & 1) ? bv[r].y : bv[r].x, kLog2e, x);
          if (i < qlo[r] || i > qhi[r]) x = -INFINITY;
        }
        const float pr = prob_bwd(x, (e & 1) ? l2.y : l2.x, (e & 1) ? ll.y : ll.x);
        st[0][nt][e] = pr;
        dpt[0][nt][e] = pr * (dpt[0][nt][e] - ((e & 1) ? dl.y : dl.x));
      }
    }
    uint32_t pa[1][NT / 2][4];
    to_a_frags<T, 1, NT>(pa, st);
    gemm_rs<T, C, 1, NT / 2>(dv, pa, sdOt, la);  // dV += P^T dO
    to_a_frags<T, 1, NT>(pa, dpt);
    gemm_rs<T, C, 1, NT / 2>(dk, pa, sQt, la);  // dK += dS^T Q
    __syncthreads();
  }

#pragma unroll
  for (int dt = 0; dt < C; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[0][dt][e] *= c.scale;
  cp_async_wait<0>();
  __syncthreads();  // K / V copies landed everywhere (also when no step ran), all reads done
  stage_acc<T, C, 1>(sK, dk, wrow, lane);
  stage_acc<T, C, 1>(sV, dv, wrow, lane);
  __syncthreads();
  store_tile<T, BN, C>(head_ptr<T>(p.dk, c, b, s.k_start, hk) + static_cast<int64_t>(n0) * p.dk.s, p.dk.s, sK,
                       s.sk - n0, c.vec, tid);
  store_tile<T, BN, C>(head_ptr<T>(p.dv, c, b, s.k_start, hk) + static_cast<int64_t>(n0) * p.dv.s, p.dv.s, sV,
                       s.sk - n0, c.vec, tid);
}

// ---------------------------------------------------------------------------
// Host side

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned(const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; }

bool is_supported(int64_t head_dim, int dtype) {
  return (head_dim == 32 || head_dim == 64 || head_dim == 128) && (dtype == kBFloat16 || dtype == kFloat16);
}

void check_params(const AttnParams& p, const char* op) {
  TF_CHECK_ARG(is_supported(p.head_dim, p.dtype), op,
               ": CUDA attention supports head_dim 32, 64 or 128 with bfloat16 or float16; got head_dim ", p.head_dim,
               ", dtype ", dtype_name(p.dtype));
  TF_CHECK_ARG(p.batch >= 0 && p.batch < (int64_t(1) << 31), op, ": batch must be in [0, 2^31), got ", p.batch);
  TF_CHECK_ARG(p.seqlen_q >= 0 && p.seqlen_k >= 0, op, ": sequence lengths must be >= 0, got seqlen_q ", p.seqlen_q,
               ", seqlen_k ", p.seqlen_k);
  TF_CHECK_ARG(p.seqlen_q <= kMaxSeqlen && p.seqlen_k <= kMaxSeqlen, op, ": sequence lengths must be <= ",
               kMaxSeqlen, ", got seqlen_q ", p.seqlen_q, ", seqlen_k ", p.seqlen_k);
  TF_CHECK_ARG(p.heads_q >= 1 && p.heads_k >= 1, op, ": heads must be >= 1, got heads_q ", p.heads_q, ", heads_k ",
               p.heads_k);
  TF_CHECK_ARG(p.heads_q % p.heads_k == 0, op, ": heads_q (", p.heads_q, ") must be a multiple of heads_k (",
               p.heads_k, ")");
  TF_CHECK_ARG(p.heads_q <= kMaxGridYZ, op, ": heads_q must be <= ", kMaxGridYZ, ", got ", p.heads_q);
  TF_CHECK_ARG((p.cu_seqlens_q == nullptr) == (p.cu_seqlens_k == nullptr), op,
               ": cu_seqlens_q and cu_seqlens_k must be given together");
  if (p.cu_seqlens_q != nullptr) {
    TF_CHECK_ARG(aligned(p.cu_seqlens_q, 4) && aligned(p.cu_seqlens_k, 4), op, ": cu_seqlens are not 4-byte aligned");
    TF_CHECK_ARG(p.total_q >= 0 && p.total_k >= 0, op, ": total_q / total_k must be >= 0, got ", p.total_q, " / ",
                 p.total_k);
  }
  // the dk / dv kernel walks (q head of the group, query tile) in an int
  TF_CHECK_ARG((p.heads_q / p.heads_k) * ceil_div(p.seqlen_q, 32) < (int64_t(1) << 31), op,
               ": too many query tiles per key head (heads_q / heads_k = ", p.heads_q / p.heads_k, ", seqlen_q ",
               p.seqlen_q, ")");
  TF_CHECK_ARG(std::isfinite(p.softmax_scale), op, ": softmax_scale must be finite, got ", p.softmax_scale);
  TF_CHECK_ARG(p.bias == nullptr || aligned(p.bias, 4), op, ": bias is not 4-byte aligned");
}

void check_tensor(const void* ptr, bool needed, const char* op, const char* name) {
  TF_CHECK_ARG(!needed || ptr != nullptr, op, ": ", name, " is a null pointer");
  TF_CHECK_ARG(aligned(ptr, 2), op, ": ", name, " is not aligned to its element size (2 bytes)");
}

void check_floats(const float* ptr, bool needed, const char* op, const char* name) {
  TF_CHECK_ARG(!needed || ptr != nullptr, op, ": ", name, " is a null pointer");
  TF_CHECK_ARG(aligned(ptr, 4), op, ": ", name, " is not 4-byte aligned");
}

// Rows (of q / lse) when the problem has any, for the empty-problem checks.
int64_t q_rows(const AttnParams& p) {
  return p.cu_seqlens_q != nullptr ? p.total_q * p.heads_q : p.batch * p.seqlen_q * p.heads_q;
}

// 16-byte cp.async needs every row start 16-byte aligned: the pointer, and every
// stride of a dimension that has more than one index.
bool rows_16b(const void* ptr, int64_t bs, int64_t ss, int64_t hs, const AttnParams& p, int64_t heads) {
  const bool varlen = p.cu_seqlens_q != nullptr;
  return aligned(ptr, 16) && (varlen || p.batch <= 1 || bs % 8 == 0) && ss % 8 == 0 && (heads <= 1 || hs % 8 == 0);
}
template <class V>
bool rows_16b(const V& t, const AttnParams& p, int64_t heads) {
  return rows_16b(t.ptr, t.batch_stride, t.seq_stride, t.head_stride, p, heads);
}

// A window at least seqlen_q + seqlen_k wide excludes nothing; -1 then, so the
// kernels only see values that fit in int.
int norm_window(int64_t w, const AttnParams& p) {
  if (w < 0 || w >= p.seqlen_q + p.seqlen_k) return -1;
  return static_cast<int>(w);
}

Common make_common(const AttnParams& p, bool vec) {
  Common c{};
  c.cu_q = p.cu_seqlens_q;
  c.cu_k = p.cu_seqlens_k;
  c.seqlen_q = static_cast<int>(p.seqlen_q);
  c.seqlen_k = static_cast<int>(p.seqlen_k);
  c.heads_q = static_cast<int>(p.heads_q);
  c.group = static_cast<int>(p.heads_q / p.heads_k);
  c.total_q = p.total_q;
  c.total_k = p.total_k;
  c.batch_base = 0;
  c.left = norm_window(p.window_left, p);
  c.right = p.causal ? 0 : norm_window(p.window_right, p);
  c.scale_log2 = static_cast<float>(static_cast<double>(p.softmax_scale) * 1.4426950408889634);
  c.scale = p.softmax_scale;
  c.bias = p.bias;
  c.bias_b = p.bias_batch_stride;
  c.bias_h = p.bias_head_stride;
  c.bias_q = p.bias_q_stride;
  c.bias_k = p.bias_k_stride;
  c.vec = vec;
  return c;
}

void set_out(OView& v, const AttnOutTensor& t) { v = OView{t.ptr, t.batch_stride, t.seq_stride, t.head_stride}; }
void set_in(TView& v, const AttnTensor& t) { v = TView{t.ptr, t.batch_stride, t.seq_stride, t.head_stride}; }

// Launches kernel over grid (gx, gy, batch) in chunks of kMaxGridYZ batches.
template <class Params>
void launch(void (*kernel)(Params), Params p, int64_t gx, int64_t gy, int64_t batch, int smem, cudaStream_t stream,
            const char* op, const char* name) {
  if (gx <= 0 || gy <= 0 || batch <= 0) return;
  if (smem > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), op,
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  }
  for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridYZ) {
    p.c.batch_base = static_cast<int>(b0);
    const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy),
                    static_cast<unsigned>(std::min<int64_t>(kMaxGridYZ, batch - b0)));
    TF_LAUNCH_NAMED(name, grid, kThreads, smem, stream, kernel)(p);
    check_launch(op, name);
  }
}

template <class T, int D>
void run_fwd(const FwdParams& p, const AttnParams& a, cudaStream_t s, const char* op) {
  using Cfg = FwdCfg<D>;
  launch(attn_fwd_kernel<T, D>, p, ceil_div(a.seqlen_q, Cfg::BM), a.heads_q, a.batch,
         a.bias != nullptr ? Cfg::kSmemBias : Cfg::kSmem, s, op, "attn_fwd_kernel");
}

template <class T, int D>
void run_bwd(const BwdParams& p, const AttnParams& a, cudaStream_t s, const char* op) {
  launch(attn_bwd_pre_kernel<T>, p, ceil_div(a.seqlen_q, kPreRows), a.heads_q, a.batch, 0, s, op,
         "attn_bwd_pre_kernel");
  const bool bias = a.bias != nullptr;
  launch(attn_bwd_dq_kernel<T, D>, p, ceil_div(a.seqlen_q, DqCfg<D>::BM), a.heads_q, a.batch,
         bias ? DqCfg<D>::kSmemBias : DqCfg<D>::kSmem, s, op, "attn_bwd_dq_kernel");
  launch(attn_bwd_dkdv_kernel<T, D>, p, ceil_div(a.seqlen_k, DkvCfg<D>::BN), a.heads_k, a.batch,
         bias ? DkvCfg<D>::kSmemBias : DkvCfg<D>::kSmem, s, op, "attn_bwd_dkdv_kernel");
}

template <class T>
void dispatch_fwd(const FwdParams& p, const AttnParams& a, cudaStream_t s, const char* op) {
  switch (a.head_dim) {
    case 32: run_fwd<T, 32>(p, a, s, op); break;
    case 64: run_fwd<T, 64>(p, a, s, op); break;
    default: run_fwd<T, 128>(p, a, s, op); break;
  }
}

template <class T>
void dispatch_bwd(const BwdParams& p, const AttnParams& a, cudaStream_t s, const char* op) {
  switch (a.head_dim) {
    case 32: run_bwd<T, 32>(p, a, s, op); break;
    case 64: run_bwd<T, 64>(p, a, s, op); break;
    default: run_bwd<T, 128>(p, a, s, op); break;
  }
}

int64_t stats_rows(const AttnParams& p) {
  return p.cu_seqlens_q != nullptr ? p.heads_q * p.total_q : p.batch * p.heads_q * p.seqlen_q;
}

}  // namespace

bool attention_supported(int64_t head_dim, int dtype) { return is_supported(head_dim, dtype); }

void attention_fwd(const AttnFwdArgs& a, int device, uintptr_t stream) {
  const char* op = "attention_fwd_cuda";
  const AttnParams& p = a.p;
  check_params(p, op);
  const bool work = p.batch > 0 && p.seqlen_q > 0 && q_rows(p) > 0;
  const bool kv = work && p.seqlen_k > 0;
  check_tensor(a.q.ptr, work, op, "q");
  check_tensor(a.k.ptr, kv, op, "k");
  check_tensor(a.v.ptr, kv, op, "v");
  check_tensor(a.out.ptr, work, op, "out");
  check_floats(a.lse, work, op, "lse");

  DeviceGuard guard(device, op);
  if (!work) return;

  FwdParams fp{};
  const bool vec = rows_16b(a.q, p, p.heads_q) && rows_16b(a.k, p, p.heads_k) && rows_16b(a.v, p, p.heads_k) &&
                   rows_16b(a.out, p, p.heads_q);
  fp.c = make_common(p, vec);
  set_in(fp.q, a.q);
  set_in(fp.k, a.k);
  set_in(fp.v, a.v);
  set_out(fp.o, a.out);
  fp.lse = a.lse;

  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  (void)cudaGetLastError();  // do not report someone else's stale error as ours
  if (p.dtype == kBFloat16) {
    dispatch_fwd<__nv_bfloat16>(fp, p, s, op);
  } else {
    dispatch_fwd<__half>(fp, p, s, op);
  }
}

int64_t attention_bwd_workspace_floats(const AttnBwdArgs& a, int device) {
  (void)device;
  check_params(a.p, "attention_bwd_cuda");
  if (a.p.batch <= 0) return 0;
  return 3 * stats_rows(a.p);
}

void attention_bwd(const AttnBwdArgs& a, float* workspace, int64_t workspace_floats, int device, uintptr_t stream) {
  const char* op = "attention_bwd_cuda";
  const AttnParams& p = a.p;
  check_params(p, op);
  const bool qwork = p.batch > 0 && p.seqlen_q > 0 && q_rows(p) > 0;  // rows of q exist
  const bool kwork = p.batch > 0 && p.seqlen_k > 0;                    // rows of k may exist
  check_tensor(a.q.ptr, qwork, op, "q");
  check_tensor(a.k.ptr, kwork, op, "k");
  check_tensor(a.v.ptr, kwork, op, "v");
  check_tensor(a.out.ptr, qwork, op, "out");
  check_tensor(a.dout.ptr, qwork, op, "dout");
  check_floats(a.lse, qwork, op, "lse");
  check_tensor(a.dq.ptr, qwork, op, "dq");
  check_tensor(a.dk.ptr, kwork, op, "dk");
  check_tensor(a.dv.ptr, kwork, op, "dv");
  const int64_t rows = p.batch > 0 ? stats_rows(p) : 0;
  const int64_t need = 3 * rows;
  TF_CHECK_ARG(workspace_floats >= need, op, ": workspace has ", workspace_floats, " floats, needs ", need,
               " (attention_bwd_workspace_floats)");
  TF_CHECK_ARG(need == 0 || workspace != nullptr, op, ": workspace is a null pointer");
  TF_CHECK_ARG(aligned(workspace, 4), op, ": workspace is not 4-byte aligned");

  DeviceGuard guard(device, op);
  if (p.batch <= 0) return;

  BwdParams bp{};
  const bool vec = rows_16b(a.q, p, p.heads_q) && rows_16b(a.k, p, p.heads_k) && rows_16b(a.v, p, p.heads_k) &&
                   rows_16b(a.dout, p, p.heads_q) && rows_16b(a.dq, p, p.heads_q) && rows_16b(a.dk, p, p.heads_k) &&
                   rows_16b(a.dv, p, p.heads_k);
  bp.c = make_common(p, vec);
  set_in(bp.q, a.q);
  set_in(bp.k, a.k);
  set_in(bp.v, a.v);
  set_in(bp.o, a.out);
  set_in(bp.dout, a.dout);
  set_out(bp.dq, a.dq);
  set_out(bp.dk, a.dk);
  set_out(bp.dv, a.dv);
  bp.lse = a.lse;
  bp.lse2 = workspace;
  bp.delta = workspace + rows;
  bp.ll2 = workspace + 2 * rows;
  bp.head_dim = static_cast<int>(p.head_dim);

  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  (void)cudaGetLastError();
  if (p.dtype == kBFloat16) {
    dispatch_bwd<__nv_bfloat16>(bp, p, s, op);
  } else {
    dispatch_bwd<__half>(bp, p, s, op);
  }
}

}  // namespace tforge::cuda
