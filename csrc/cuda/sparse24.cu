// 2:4 sparse linear layer and N:M mask on CUDA (sm_80, sm_90a).
// Semantics and packed format: common/sparse24_args.h.
//
// Sparse linear, y [M, N] = x [M, K] @ W^T + bias: the sparse tensor-core op
// mma.sp m16n8k32 takes its *A* operand 2:4 sparse, so a CTA computes the
// transposed tile D = W x^T (A = 16 rows of W x 32 of K, given as 16 x 16
// kept values plus metadata; B = x^T, which is K-major in memory, exactly the
// "col" layout mma wants) and writes D transposed into y. Kept values are
// loaded with ldmatrix straight from the natural [N, K/2] rows (the A fragment
// of m16n8k32.sp is the 16x16 compressed tile in the dense m16n8k16 A layout);
// x fragments with ldmatrix from [M, K] rows.
//
// Metadata: the natural nibbles (i0 | i1 << 2 per group of 4, group g at bits
// 4g of the little-endian row) are already mma.sp's encoding; only the
// distribution over threads differs. With sparsity selector 0, lane 4g + p
// (p = 0, 1) must hold, for one k32 step, the 16 bits of row g for columns
// 16p..16p+15 in its low half and the same bits of row g + 8 in its high
// half (PTX ISA, "Sparse MMA .m16n8k32 metadata layout for .f16/.bf16").
// Each lane loads the two rows' 32-bit metadata words of the step from shared
// memory and merges the halves with one byte_perm; lanes 4g + 2, 4g + 3 do
// the same work but are ignored by the hardware. Our nibbles always have
// i0 < i1, so mma.sp::ordered_metadata (PTX 8.5, CUDA >= 12.5; recommended by
// the ISA over plain mma.sp) is used when the compiler has it.
//
// Tiling: a CTA owns TN rows of W (= n) by TM rows of x (= m), K in tiles of
// 64; per stage shared memory holds TN x 64 B kept values, TM x 128 B of x
// and TN x 8 B metadata, filled by cp.async (16-byte values / x, 4-byte
// metadata) in a STAGES-deep ring with the barrier placement of int8.cu.
// Shared rows are XOR-swizzled by 16-byte chunk so ldmatrix and the copies
// are bank-conflict free. Warps split the tile WN x WM; each k32 step a warp
// issues kMT x kNT mma.sp; kept values / metadata are double-buffered in
// registers, x fragments are reloaded column by column right after their last
// use (that keeps the 64x64 warp tile within 255 registers, no spills).
// Configs (all 4 warps): 128x128 (warp 64x64, 4 stages, 100 KiB, 2 CTAs/SM)
// for M > 64 with enough tiles; 128x64 (warp 32x64, 4 stages, 68 KiB) for
// 16 < M <= 64 or when the large tiles would not fill the GPU; 128x16 (warp
// 32x16, 6 stages, 66 KiB) for M <= 16 (decode: streaming the weight is all
// that matters). The tile raster walks 8 m-tiles at a time (L2 reuse).
// When the tiles do not fill the GPU, K is split over `splits` CTAs per tile
// (at least 4 K tiles each, up to 16): every CTA writes its fp32 partial tile
// to a workspace the caller allocates (sparse24_linear_workspace_bytes; from
// torch's caching allocator, as the other ops' workspaces; counters zeroed by
// cudaMemsetAsync), and the last CTA of the tile to arrive (atomic counter)
// adds the partials in split order (deterministic) and runs the epilogue.
//
// Tails: W rows past N are zero-filled with valid padding metadata (0b0100
// nibbles; mma.sp must never see an unordered pair), x rows past M are
// zero-filled, and k32 steps lying wholly past K are skipped (warp-uniform).
// The cp.async path needs K % 32 == 0, 16-byte aligned values / x rows and
// 4-byte aligned metadata rows; anything else (any K % 4 == 0, any 2-byte
// alignment) takes a synchronous element-wise loader into the same shared
// layout that zero-fills values / x past K, fills metadata nibbles past K with
// 0b0100 and repeats row N - 1 for W rows past N (128x64 tile only).
// Epilogue: accumulators -> shared memory (rows padded by 4 floats: conflict
// free) -> 4 consecutive n per thread: + bias, round to nearest even to x's
// dtype, 8-byte stores when aligned.
//
// N:M mask: one thread per group of m <= 16 scores; a score is kept when
// fewer than n scores of its group beat it (greater, or equal at a lower
// column).
#include "cuda/sparse24.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "common/checks.h"
#include "common/cuda_utils.h"
#include "common/dtype.h"
#include "cuda/ptx.cuh"

#define SP24_DEV __device__ __forceinline__
#define SP24_HD __host__ __device__ __forceinline__

namespace tforge::cuda {
namespace {

struct F4 {
  float x, y, z, w;
};
struct U4 {
  uint32_t x, y, z, w;
};

// ---------------------------------------------------------------------------
// Primitives (the PTX itself lives in cuda/ptx.cuh). Shared-memory addresses are 32-bit
// shared-window addresses.

using ptx::cp_async_commit;
using ptx::cp_async_wait;
using ptx::opaque;

SP24_DEV uint32_t smem_addr(const void* p) { return ptx::smem_u32(p); }
// 16-byte global -> shared copy: `bytes` (0 or 16) read, the rest zero-filled.
SP24_DEV void cp_async16(uint32_t dst, const void* src, int bytes) { ptx::cp_async_16_zfill(dst, src, bytes); }
// 4-byte global -> shared copy (metadata words).
SP24_DEV void cp_async4(uint32_t dst, const void* src, int bytes) { ptx::cp_async_4_zfill(dst, src, bytes); }
SP24_DEV void ldsm_x4(uint32_t (&r)[4], uint32_t addr) { ptx::ldmatrix_x4(r, addr); }
template <bool kBF16>
SP24_DEV void mma_sp(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t e) {
  ptx::mma_sp_m16n8k32<kBF16>(d, a, b, e);
}
SP24_DEV uint32_t lds_u32(uint32_t addr) { return ptx::ld_shared_b32(addr); }
SP24_DEV void sts_u32(uint32_t addr, uint32_t v) { ptx::st_shared_b32(addr, v); }
SP24_DEV void sts_u128(uint32_t addr, const U4& v) { ptx::st_shared_v4(addr, make_uint4(v.x, v.y, v.z, v.w)); }
SP24_DEV void sts_f32(uint32_t addr, float v) { ptx::st_shared_f32(addr, v); }
SP24_DEV F4 lds_f32x4(uint32_t addr) {
  const float4 v = ptx::ld_shared_v4f(addr);
  return F4{v.x, v.y, v.z, v.w};
}
SP24_DEV uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t s) { return __byte_perm(a, b, s); }
SP24_DEV void block_sync() { __syncthreads(); }

SP24_DEV uint16_t ldg_u16(const uint16_t* p) { return __ldg(p); }
SP24_DEV uint8_t ldg_u8(const uint8_t* p) { return __ldg(p); }
SP24_DEV float ldg_f32(const float* p) { return __ldg(p); }
// L2 load (bypasses L1): reads other CTAs' split-K partials.
SP24_DEV F4 ldcg_f32x4(const float* p) {
  const float4 v = __ldcg(reinterpret_cast<const float4*>(p));
  return F4{v.x, v.y, v.z, v.w};
}
SP24_DEV void stg_f32x4(float* p, const F4& v) { *reinterpret_cast<float4*>(p) = make_float4(v.x, v.y, v.z, v.w); }
SP24_DEV void stg_u16(uint16_t* p, uint16_t v) { *p = v; }
// Four 16-bit values, one 8-byte store (p 8-byte aligned).
SP24_DEV void stg_u16x4(uint16_t* p, uint16_t a, uint16_t b, uint16_t c, uint16_t d) {
  *reinterpret_cast<uint2*>(p) = make_uint2(a | (uint32_t(b) << 16), c | (uint32_t(d) << 16));
}
SP24_DEV void stg_u8(uint8_t* p, uint8_t v) { *p = v; }
SP24_DEV void stg_u32(uint32_t* p, uint32_t v) { *p = v; }
SP24_DEV void thread_fence() { __threadfence(); }
SP24_DEV unsigned atomic_add_u32(unsigned* p, unsigned v) { return atomicAdd(p, v); }

// fp32 -> bf16 / fp16 bits, round to nearest even; bf16 / fp16 bits -> fp32.
template <bool kBF16>
SP24_DEV uint16_t f32_to_16(float f) {
  if constexpr (kBF16) return __bfloat16_as_ushort(__float2bfloat16_rn(f));
  else return __half_as_ushort(__float2half_rn(f));
}
SP24_DEV float bf16_to_f32(uint16_t h) { return __uint_as_float(uint32_t(h) << 16); }
SP24_DEV float f16_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// ---------------------------------------------------------------------------
// Tile configs and index math (host-callable so it can be emulated)

SP24_HD int imin(int a, int b) { return a < b ? a : b; }
SP24_HD int cdiv(int a, int b) { return (a + b - 1) / b; }

constexpr int kBK = 64;         // dense K per stage (32 kept values per W row)
constexpr int kGroupTiles = 8;  // tile rows per raster group (L2 reuse)
constexpr int kWRowBytes = kBK;      // kept values of one W row in a stage: 32 x 2 B
constexpr int kXRowBytes = kBK * 2;  // one x row in a stage: 64 x 2 B
constexpr int kMRowBytes = kBK / 8;  // metadata of one W row in a stage: 16 nibbles

template <int TN_, int TM_, int WN_, int WM_, int STAGES_, int MIN_BLOCKS_>
struct SpCfg {
  static constexpr int TN = TN_, TM = TM_;  // CTA tile: W rows (n) x x rows (m)
  static constexpr int WN = WN_, WM = WM_;  // warps along n, m
  static constexpr int STAGES = STAGES_, MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int kWarps = WN * WM, kThreads = 32 * kWarps;
  static constexpr int kWarpN = TN / WN, kWarpM = TM / WM;
  static constexpr int kMT = kWarpN / 16, kNT = kWarpM / 8, kKS = kBK / 32;  // mma tiles, k32 steps
  static constexpr int kWBytes = TN * kWRowBytes, kXBytes = TM * kXRowBytes, kMBytes = TN * kMRowBytes;
  static constexpr int kStageBytes = kWBytes + kXBytes + kMBytes;
  static constexpr int kWIters = TN * 4 / kThreads;  // 16-byte value chunks per thread per stage
  static constexpr int kXIters = TM * 8 / kThreads;  // 16-byte x chunks
  static constexpr int kMIters = TN * 2 / kThreads;  // 4-byte metadata words
  static constexpr int kYStride = TN + 4;            // staged output row (floats): conflict-free stores
  static constexpr int kEpiIters = TM * TN / 4 / kThreads;
  static constexpr int kPipeBytes = STAGES * kStageBytes, kEpiBytes = TM * kYStride * 4;
  static constexpr int kFlagOff = kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes;  // split-K "last CTA" flag
  static constexpr int kSmem = kFlagOff + 16;

  static_assert(TN % WN == 0 && TM % WM == 0 && kWarpN % 16 == 0 && kWarpM % 8 == 0, "warp tile vs mma shape");
  static_assert(TN * 4 % kThreads == 0 && TM * 8 % kThreads == 0 && TN * 2 % kThreads == 0, "copy split");
  static_assert((kThreads / 4) % 8 == 0 && (kThreads / 8) % 8 == 0, "copies keep the swizzle phase of their row");
  static_assert(TM * TN / 4 % kThreads == 0, "epilogue split");
  static_assert(kKS % 2 == 0, "fragment double buffering alternates buffers within a stage");
  static_assert(STAGES >= 3, "pipeline depth");
  static_assert(kStageBytes % 128 == 0, "stage alignment");
};

using CfgLarge = SpCfg<128, 128, 2, 2, 4, 2>;  // 100 KiB smem, warps of 64 (n) x 64 (m)
using CfgMid = SpCfg<128, 64, 4, 1, 4, 3>;     // 68 KiB smem, warps of 32 x 64
using CfgSmall = SpCfg<128, 16, 4, 1, 6, 3>;   // 66 KiB smem, warps of 32 x 16

// Shared layout of a stage: [values: TN rows x 64 B][x: TM rows x 128 B][metadata: TN rows x 8 B].
// 16-byte chunks are XOR-swizzled by row: 8 consecutive rows (one ldmatrix matrix, or the copies of
// one chunk column) hit 8 different 16-byte bank groups. 64-byte rows: two rows per 128-byte line,
// phase (row / 2) % 4; 128-byte rows: row % 8. Period 8 in row.
SP24_HD int w_off(int row, int chunk) { return row * kWRowBytes + ((chunk ^ ((row >> 1) & 3)) << 4); }
SP24_HD int x_off(int row, int chunk) { return row * kXRowBytes + ((chunk ^ (row & 7)) << 4); }
SP24_HD int meta_off(int row, int word) { return row * kMRowBytes + word * 4; }

// Copies: thread tid moves value chunk tid % 4 of rows tid / 4 + i * (threads / 4), x chunk
// tid % 8 of rows tid / 8 + i * (threads / 8), metadata word tid % 2 of rows tid / 2 + i * (threads / 2).
template <class C>
SP24_HD int w_copy_row(int tid, int i) { return (tid >> 2) + i * (C::kThreads / 4); }
SP24_HD int w_copy_chunk(int tid) { return tid & 3; }
template <class C>
SP24_HD int x_copy_row(int tid, int i) { return (tid >> 3) + i * (C::kThreads / 8); }
SP24_HD int x_copy_chunk(int tid) { return tid & 7; }
template <class C>
SP24_HD int m_copy_row(int tid, int i) { return (tid >> 1) + i * (C::kThreads / 2); }
SP24_HD int m_copy_word(int tid) { return tid & 1; }

// ldmatrix addressing for k32 step ks. A (kept values, 16 rows x 16 values = chunks 2ks, 2ks + 1):
// matrices (rows 0-7, chunk 2ks), (rows 8-15, 2ks), (rows 0-7, 2ks + 1), (rows 8-15, 2ks + 1) = a[0..3],
// i.e. a[0] = values (row g, group t), a[1] = (row g + 8, group t), a[2] = (g, group 4 + t),
// a[3] = (g + 8, 4 + t) of the step, as mma.sp m16n8k32 wants (g = lane / 4, t = lane % 4).
// B (8 x rows x 32 k = chunks 4ks .. 4ks + 3): matrix j = chunk 4ks + j, so b[j] = x[row g][8j + 2t, +1].
SP24_HD int a_ldsm_row(int lane) { return lane & 15; }
SP24_HD int a_ldsm_chunk(int lane, int ks) { return 2 * ks + (lane >> 4); }
SP24_HD int b_ldsm_row(int lane) { return lane & 7; }
SP24_HD int b_ldsm_chunk(int lane, int ks) { return 4 * ks + (lane >> 3); }

// Metadata register of lane 4g + t (selector 0: t = 0, 1 count): low half = row g's 16 bits for
// columns 16p..16p+15 of the step (p = t % 2), high half = the same of row g + 8. The lane reads
// the 32-bit step words of rows g and g + 8 (group j of the step at bits 4j) and merges them with
// byte_perm(word_g, word_g8, selector): bytes 0-1 of each for p = 0, bytes 2-3 for p = 1.
SP24_HD int meta_lane_row(int lane) { return lane >> 2; }
SP24_HD uint32_t meta_perm_selector(int lane) { return (lane & 1) ? 0x7632u : 0x5410u; }

// Accumulator i of a lane in an m16n8 tile of D = W x^T: D[row][col] with row (n) = g + 8 * (i / 2),
// col (m) = 2t + i % 2.
SP24_HD int acc_n(int lane, int i) { return (lane >> 2) + ((i >> 1) << 3); }
SP24_HD int acc_m(int lane, int i) { return 2 * (lane & 3) + (i & 1); }

// Metadata byte holding groups g0, g0 + 1 (g0 even) of a row with `groups` groups: groups past the
// end get nibble 0b0100 (i0 = 0, i1 = 1; their values are zero) so mma.sp always sees valid metadata.
SP24_HD uint32_t patch_meta_byte(uint32_t byte, int g0, int groups) {
  const uint32_t lo = g0 < groups ? (byte & 15u) : 4u;
  const uint32_t hi = g0 + 1 < groups ? (byte >> 4) & 15u : 4u;
  return lo | (hi << 4);
}

// First K tile of split s (of `splits`) over k_tiles tiles; split s covers [begin(s), begin(s + 1)).
SP24_HD int split_begin(int s, int splits, int k_tiles) {
  return static_cast<int>(static_cast<int64_t>(s) * k_tiles / splits);
}

// Grouped raster: tile pid -> (tile along m, tile along n), kGroupTiles m tiles at a time.
SP24_HD void tile_coords(int pid, int tiles_m, int tiles_n, int& tm, int& tn) {
  const int per_group = kGroupTiles * tiles_n;
  const int group = pid / per_group;
  const int first_m = group * kGroupTiles;
  const int rows = tiles_m - first_m < kGroupTiles ? tiles_m - first_m : kGroupTiles;
  const int in_group = pid - group * per_group;
  tm = first_m + in_group % rows;
  tn = in_group / rows;
}

// ---------------------------------------------------------------------------
// Sparse linear: CTA body

struct SpParams {
  const uint16_t* x;     // [M, x_stride] bf16 / fp16 bits
  const uint16_t* w;     // [N, K / 2] kept values
  const uint8_t* meta;   // [N, meta_stride] natural nibbles
  uint16_t* y;           // [M, y_stride]
  const float* bias;     // [N] or null
  float* ws;             // split-K partials [tiles][splits][TM * TN] (splits > 1)
  unsigned* counters;    // [tiles], zero on entry (splits > 1)
  int64_t x_stride, meta_stride, y_stride;
  int M, N, K, k_tiles, splits;
  int y_vec;  // y rows take 8-byte stores of 4 outputs (n % 4 == 0)
};

// Metadata word for rows past N: nibbles 0b0100 (i0 = 0, i1 = 1), valid for mma.sp (values are 0).
constexpr uint32_t kPadMetaWord = 0x44444444u;

// cp.async copies of consecutive K tiles (fast path: K % 32 == 0, value and x rows 16-byte
// aligned, metadata rows 4-byte aligned). The thread keeps one pointer per operand (its first
// copy row, at its chunk of the next tile) and steps to further rows through an opaque add, so
// the compiler cannot hoist one 64-bit address per copy out of the K loop (registers are tight).
// Value / x chunks past K are zero-filled (their k32 steps are skipped anyway); value rows past N
// are zero-filled, their metadata words written as kPadMetaWord; x rows past M are zero-filled.
template <class C>
struct AsyncLoader {
  const uint16_t* w;
  const uint16_t* x;
  const uint8_t* m;
  uint32_t w_rows, x_rows, m_rows;  // bit i: copy row i lies inside the matrix
  int k0;                           // first dense column of the next tile

  SP24_DEV AsyncLoader(const SpParams& p, int tid, int n0, int m0, int kt) {
    k0 = kt * kBK;
    w_rows = x_rows = m_rows = 0;
#pragma unroll
    for (int i = 0; i < C::kWIters; ++i) w_rows |= (n0 + w_copy_row<C>(tid, i) < p.N ? 1u : 0u) << i;
#pragma unroll
    for (int i = 0; i < C::kXIters; ++i) x_rows |= (m0 + x_copy_row<C>(tid, i) < p.M ? 1u : 0u) << i;
#pragma unroll
    for (int i = 0; i < C::kMIters; ++i) m_rows |= (n0 + m_copy_row<C>(tid, i) < p.N ? 1u : 0u) << i;
    // Clamped first rows keep the pointers inside the tensors (rows past the end are never read).
    w = p.w + static_cast<int64_t>(imin(n0 + w_copy_row<C>(tid, 0), p.N - 1)) * (p.K / 2) + k0 / 2 +
        w_copy_chunk(tid) * 8;
    x = p.x + static_cast<int64_t>(imin(m0 + x_copy_row<C>(tid, 0), p.M - 1)) * p.x_stride + k0 +
        x_copy_chunk(tid) * 8;
    m = p.meta + static_cast<int64_t>(imin(n0 + m_copy_row<C>(tid, 0), p.N - 1)) * p.meta_stride + k0 / 8 +
        m_copy_word(tid) * 4;
  }

  // Issues the copies of the next tile into the stage at `stage` and steps to the tile after it.
  SP24_DEV void load(const SpParams& p, int tid, uint32_t stage) {
    {
      const int c = w_copy_chunk(tid);
      const bool kin = k0 + c * 16 < p.K;
      const int64_t step = static_cast<int64_t>(C::kThreads / 4) * (p.K / 2);
      const uint16_t* src = w;
#pragma unroll
      for (int i = 0; i < C::kWIters; ++i) {
        const bool ok = kin && ((w_rows >> i) & 1u);
        cp_async16(stage + w_off(w_copy_row<C>(tid, i), c), ok ? src : p.w, ok ? 16 : 0);
        src = opaque(src + step);
      }
    }
    {
      const int c = x_copy_chunk(tid);
      const bool kin = k0 + c * 8 < p.K;
      const int64_t step = static_cast<int64_t>(C::kThreads / 8) * p.x_stride;
      const uint16_t* src = x;
#pragma unroll
      for (int i = 0; i < C::kXIters; ++i) {
        const bool ok = kin && ((x_rows >> i) & 1u);
        cp_async16(stage + C::kWBytes + x_off(x_copy_row<C>(tid, i), c), ok ? src : p.x, ok ? 16 : 0);
        src = opaque(src + step);
      }
    }
    {
      const int word = m_copy_word(tid);
      const bool kin = k0 + word * 32 < p.K;
      const int64_t step = static_cast<int64_t>(C::kThreads / 2) * p.meta_stride;
      const uint8_t* src = m;
#pragma unroll
      for (int i = 0; i < C::kMIters; ++i) {
        const uint32_t dst = stage + C::kWBytes + C::kXBytes + meta_off(m_copy_row<C>(tid, i), word);
        if ((m_rows >> i) & 1u) cp_async4(dst, kin ? src : p.meta, kin ? 4 : 0);
        else sts_u32(dst, kPadMetaWord);
        src = opaque(src + step);
      }
    }
    w += kBK / 2;
    x += kBK;
    m += kBK / 8;
    k0 += kBK;
  }
};

// The same shared image with synchronous element loads (any K % 4 == 0, any 2-byte alignment):
// values / x past K (or x rows past M) are zero, metadata nibbles past K are 0b0100; W rows past
// N repeat row N - 1 (valid metadata; those outputs are dropped). Slow path: stateless, one tile
// index.
template <class C>
struct SyncLoader {
  int n0, m0, kt;  // tile origin, next K tile

  SP24_DEV SyncLoader(const SpParams&, int, int n0_, int m0_, int kt_) : n0(n0_), m0(m0_), kt(kt_) {}

  // Loads the next tile into the stage at `stage` and steps to the tile after it.
  SP24_DEV void load(const SpParams& p, int tid, uint32_t stage) {
    const int k0 = kt * kBK;
    const int half_k = p.K / 2, groups = p.K / 4;
    {
      const int c = w_copy_chunk(tid);
      const int v0 = k0 / 2 + c * 8;  // first kept-value index of the chunk
#pragma unroll 1
      for (int i = 0; i < C::kWIters; ++i) {
        const int r = w_copy_row<C>(tid, i);
        const uint16_t* row = p.w + static_cast<int64_t>(imin(n0 + r, p.N - 1)) * half_k;
        uint32_t h[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) h[j] = v0 + j < half_k ? ldg_u16(row + v0 + j) : 0u;
        sts_u128(stage + w_off(r, c),
                 U4{h[0] | (h[1] << 16), h[2] | (h[3] << 16), h[4] | (h[5] << 16), h[6] | (h[7] << 16)});
      }
    }
    {
      const int c = x_copy_chunk(tid);
      const int kd = k0 + c * 8;
#pragma unroll 1
      for (int i = 0; i < C::kXIters; ++i) {
        const int r = x_copy_row<C>(tid, i);
        const bool mok = m0 + r < p.M;
        const uint16_t* row = p.x + (mok ? static_cast<int64_t>(m0 + r) * p.x_stride : 0);
        uint32_t h[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) h[j] = mok && kd + j < p.K ? ldg_u16(row + kd + j) : 0u;
        sts_u128(stage + C::kWBytes + x_off(r, c),
                 U4{h[0] | (h[1] << 16), h[2] | (h[3] << 16), h[4] | (h[5] << 16), h[6] | (h[7] << 16)});
      }
    }
    {
      const int word = m_copy_word(tid);
      const int b0 = k0 / 8 + word * 4;  // first metadata byte of the word
#pragma unroll 1
      for (int i = 0; i < C::kMIters; ++i) {
        const int r = m_copy_row<C>(tid, i);
        const uint8_t* row = p.meta + static_cast<int64_t>(imin(n0 + r, p.N - 1)) * p.meta_stride;
        uint32_t v = 0;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const int g0 = 2 * (b0 + b);  // groups 2 * byte and 2 * byte + 1
          const uint32_t raw = g0 < groups ? ldg_u8(row + b0 + b) : 0u;
          v |= patch_meta_byte(raw, g0, groups) << (8 * b);
        }
        sts_u32(stage + C::kWBytes + C::kXBytes + meta_off(r, word), v);
      }
    }
    ++kt;
  }
};

// A warp's fragments. The kept values and metadata are double-buffered by k32 step; the x
// fragments are single-buffered: column nt is reloaded for the next step right after its last mma
// of the current one (they are the larger half, and this keeps the 64x64 warp tile in registers).
template <class C>
struct Frags {
  uint32_t a[2][C::kMT][4];  // kept values
  uint32_t e[2][C::kMT];     // metadata
  uint32_t b[C::kNT][4];     // x
};

// Lane offsets in a stage, per k32 step, of the warp's first m16 tile / n8 tile; further tiles
// are whole multiples of 8 rows away (the swizzle has period 8).
template <class C>
struct FragOffsets {
  int a[C::kKS], b[C::kKS], e[C::kKS];
};

template <class C>
SP24_DEV void load_frag_a(Frags<C>& f, int buf, uint32_t stage, const FragOffsets<C>& o, int ks, uint32_t sel) {
#pragma unroll
  for (int mt = 0; mt < C::kMT; ++mt) ldsm_x4(f.a[buf][mt], stage + o.a[ks] + mt * 16 * kWRowBytes);
#pragma unroll
  for (int mt = 0; mt < C::kMT; ++mt) {
    const uint32_t lo = lds_u32(stage + o.e[ks] + mt * 16 * kMRowBytes);
    const uint32_t hi = lds_u32(stage + o.e[ks] + (mt * 16 + 8) * kMRowBytes);
    f.e[buf][mt] = byte_perm(lo, hi, sel);
  }
}

template <class C>
SP24_DEV void load_frag_b(Frags<C>& f, int nt, uint32_t stage, const FragOffsets<C>& o, int ks) {
  ldsm_x4(f.b[nt], stage + o.b[ks] + nt * 8 * kXRowBytes);
}

// Outputs (m, n .. n + 3) from fp32 sums v (n % 4 == 0): + bias (bias: the 4 columns' values,
// zero without bias), rounded to bf16 / fp16.
template <bool kBF16>
SP24_DEV void store_out(const SpParams& p, int m, int n, const F4& v, const float (&bias)[4]) {
  if (m >= p.M || n >= p.N) return;
  const float o[4] = {v.x + bias[0], v.y + bias[1], v.z + bias[2], v.w + bias[3]};
  uint16_t* dst = p.y + static_cast<int64_t>(m) * p.y_stride + n;
  if (p.y_vec && n + 3 < p.N) {
    stg_u16x4(dst, f32_to_16<kBF16>(o[0]), f32_to_16<kBF16>(o[1]), f32_to_16<kBF16>(o[2]), f32_to_16<kBF16>(o[3]));
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (n + j < p.N) stg_u16(dst + j, f32_to_16<kBF16>(o[j]));
  }
}

// One CTA: tile pid (grouped raster), K split `split`. smem: shared address of the C::kSmem bytes.
template <class C, bool kBF16, bool kAsync>
SP24_DEV void sparse24_cta(const SpParams& p, int tid, int pid, int split, uint32_t smem) {
  const int lane = tid & 31, warp = tid >> 5;
  const int wn = warp / C::WM, wm = warp % C::WM;
  int tm, tn;
  tile_coords(pid, cdiv(p.M, C::TM), cdiv(p.N, C::TN), tm, tn);
  const int n0 = tn * C::TN, m0 = tm * C::TM;
  const int kt0 = split_begin(split, p.splits, p.k_tiles);
  const int nk = split_begin(split + 1, p.splits, p.k_tiles) - kt0;

  FragOffsets<C> off;
#pragma unroll
  for (int ks = 0; ks < C::kKS; ++ks) {
    off.a[ks] = w_off(wn * C::kWarpN + a_ldsm_row(lane), a_ldsm_chunk(lane, ks));
    off.b[ks] = C::kWBytes + x_off(wm * C::kWarpM + b_ldsm_row(lane), b_ldsm_chunk(lane, ks));
    off.e[ks] = C::kWBytes + C::kXBytes + meta_off(wn * C::kWarpN + meta_lane_row(lane), ks);
  }
  const uint32_t sel = meta_perm_selector(lane);

  float acc[C::kMT][C::kNT][4];
#pragma unroll
  for (int mt = 0; mt < C::kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < C::kNT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.f;

  // Pipeline (as int8.cu): tiles 0 .. STAGES-2 in flight before the loop. In iteration it, before
  // the last k step's mma, the CTA issues tile it + STAGES - 1 into the stage read in iteration
  // it - 1, waits until tile it + 1 has landed and passes the barrier (which also orders every
  // warp's reads of stage it - 1 before those writes), then loads the next stage's first
  // fragments while the last mma batch runs. Past the last tile those loads read stale data that
  // is never used. Steps whose 32 columns all lie past K are skipped (warp-uniform).
  using Loader = std::conditional_t<kAsync, AsyncLoader<C>, SyncLoader<C>>;
  Loader loader(p, tid, n0, m0, kt0);
#pragma unroll
  for (int s = 0; s < C::STAGES - 1; ++s) {
    if (s < nk) loader.load(p, tid, smem + s * C::kStageBytes);
    cp_async_commit();  // empty groups past the end keep the group count uniform
  }
  cp_async_wait<C::STAGES - 2>();
  block_sync();

  int read_stage = 0, write_stage = C::STAGES - 1;
  Frags<C> f;
  load_frag_a<C>(f, 0, smem, off, 0, sel);
#pragma unroll
  for (int nt = 0; nt < C::kNT; ++nt) load_frag_b<C>(f, nt, smem, off, 0);
  for (int it = 0; it < nk; ++it) {
    const int kbase = (kt0 + it) * kBK;
#pragma unroll
    for (int ks = 0; ks < C::kKS; ++ks) {
      if (ks == C::kKS - 1) {
        if (it + C::STAGES - 1 < nk)
          loader.load(p, tid, smem + write_stage * C::kStageBytes);  // tile it + STAGES - 1
        cp_async_commit();
        cp_async_wait<C::STAGES - 2>();
        block_sync();
        read_stage = read_stage + 1 == C::STAGES ? 0 : read_stage + 1;
        write_stage = write_stage + 1 == C::STAGES ? 0 : write_stage + 1;
      }
      const int nks = ks + 1 == C::kKS ? 0 : ks + 1;
      const uint32_t next = smem + read_stage * C::kStageBytes;  // holds step nks
      const bool live = ks == 0 || kbase + ks * 32 < p.K;
      load_frag_a<C>(f, (ks + 1) & 1, next, off, nks, sel);
#pragma unroll
      for (int nt = 0; nt < C::kNT; ++nt) {
        if (live) {
#pragma unroll
          for (int mt = 0; mt < C::kMT; ++mt) mma_sp<kBF16>(acc[mt][nt], f.a[ks & 1][mt], f.b[nt], f.e[ks & 1][mt]);
        }
        load_frag_b<C>(f, nt, next, off, nks);
      }
    }
  }
  cp_async_wait<0>();
  block_sync();  // the pipeline's shared memory becomes the output staging tile

  // Stage D^T = the y tile [TM][TN] (row stride kYStride floats).
#pragma unroll
  for (int mt = 0; mt < C::kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < C::kNT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int nl = wn * C::kWarpN + mt * 16 + acc_n(lane, i);
        const int ml = wm * C::kWarpM + nt * 8 + acc_m(lane, i);
        sts_f32(smem + (ml * C::kYStride + nl) * 4, acc[mt][nt][i]);
      }
    }
  }
  block_sync();

  // Output phase: a thread owns columns nl .. nl + 3 of rows ml0, ml0 + kRowStep, ...; a warp
  // covers one 512-byte staged row (conflict free) and one contiguous piece of a y row.
  constexpr int kRowGroups = C::TN / 4, kRowStep = C::kThreads / kRowGroups;
  static_assert(C::kThreads % kRowGroups == 0, "epilogue threads per row");
  const int nl = (tid % kRowGroups) * 4, ml0 = tid / kRowGroups;
  const int n = n0 + nl;
  float bias[4] = {0.f, 0.f, 0.f, 0.f};
  if (p.bias != nullptr) {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (n + j < p.N) bias[j] = ldg_f32(p.bias + n + j);
  }
  if (p.splits == 1) {
#pragma unroll 4
    for (int j = 0; j < C::kEpiIters; ++j) {
      const int ml = ml0 + j * kRowStep;
      store_out<kBF16>(p, m0 + ml, n, lds_f32x4(smem + (ml * C::kYStride + nl) * 4), bias);
    }
    return;
  }

  // Split K: publish this split's partial tile; the last CTA of the tile to arrive adds all
  // partials in split order (so the result does not depend on arrival order) and stores.
  constexpr int kTileElems = C::TM * C::TN;
  float* part = p.ws + (static_cast<int64_t>(pid) * p.splits + split) * kTileElems;
#pragma unroll 4
  for (int j = 0; j < C::kEpiIters; ++j) {
    const int ml = ml0 + j * kRowStep;
    stg_f32x4(part + ml * C::TN + nl, lds_f32x4(smem + (ml * C::kYStride + nl) * 4));
  }
  thread_fence();  // partials visible device-wide before the arrival is counted
  block_sync();
  if (tid == 0) {
    const unsigned prev = atomic_add_u32(p.counters + pid, 1u);
    sts_u32(smem + C::kFlagOff, prev + 1 == static_cast<unsigned>(p.splits) ? 1u : 0u);
  }
  block_sync();
  if (lds_u32(smem + C::kFlagOff) == 0) return;
  thread_fence();
  const float* parts = p.ws + static_cast<int64_t>(pid) * p.splits * kTileElems;
#pragma unroll 1
  for (int j = 0; j < C::kEpiIters; ++j) {
    const int ml = ml0 + j * kRowStep;
    F4 s{0.f, 0.f, 0.f, 0.f};
#pragma unroll 1
    for (int sp = 0; sp < p.splits; ++sp) {
      const F4 v = ldcg_f32x4(parts + static_cast<int64_t>(sp) * kTileElems + ml * C::TN + nl);
      s.x += v.x;
      s.y += v.y;
      s.z += v.z;
      s.w += v.w;
    }
    store_out<kBF16>(p, m0 + ml, n, s, bias);
  }
}

// ---------------------------------------------------------------------------
// N:M mask: one thread per group

struct NMParams {
  const void* scores;  // [rows, s_stride]
  uint8_t* mask;       // [rows, cols]
  int64_t s_stride, rows, cols, groups_per_row;
  int n, m;
  int vec4;  // m == 4 and 4-byte aligned mask groups: one 32-bit store per group
};

template <int DT>
SP24_DEV float load_score(const void* base, int64_t i) {
  if constexpr (DT == kFloat32) return ldg_f32(static_cast<const float*>(base) + i);
  else if constexpr (DT == kBFloat16) return bf16_to_f32(ldg_u16(static_cast<const uint16_t*>(base) + i));
  else return f16_to_f32(ldg_u16(static_cast<const uint16_t*>(base) + i));
}

// MG: the group size when known at compile time (4), else 0 (p.m, up to 16).
template <int DT, int MG>
SP24_DEV void nm_mask_group(const NMParams& p, int64_t gidx) {
  constexpr int kMax = MG > 0 ? MG : 16;
  const int m = MG > 0 ? MG : p.m;
  const int64_t row = gidx / p.groups_per_row;
  const int64_t c0 = (gidx - row * p.groups_per_row) * m;
  float s[kMax];
#pragma unroll
  for (int i = 0; i < kMax; ++i) s[i] = i < m ? load_score<DT>(p.scores, row * p.s_stride + c0 + i) : 0.f;
  uint32_t keep = 0;  // bit i: score i is kept
#pragma unroll
  for (int i = 0; i < kMax; ++i) {
    int beaten_by = 0;  // scores ranked above s[i]: greater, or equal at a lower column
#pragma unroll
    for (int j = 0; j < kMax; ++j)
      beaten_by += (j < m && (s[j] > s[i] || (s[j] == s[i] && j < i))) ? 1 : 0;
    keep |= (i < m && beaten_by < p.n ? 1u : 0u) << i;
  }
  uint8_t* out = p.mask + row * p.cols + c0;
  if (MG == 4 && p.vec4) {
    stg_u32(reinterpret_cast<uint32_t*>(out),
            (keep & 1u) | ((keep >> 1) & 1u) << 8 | ((keep >> 2) & 1u) << 16 | ((keep >> 3) & 1u) << 24);
  } else {
#pragma unroll
    for (int i = 0; i < kMax; ++i)
      if (i < m) stg_u8(out + i, static_cast<uint8_t>((keep >> i) & 1u));
  }
}

// ---------------------------------------------------------------------------
// Host side: argument checks, parameters, path and split choice (plain C++, emulated too)

constexpr int64_t kMaxDim = int64_t(INT_MAX) - 4096;  // every in-kernel index (+ a tile) fits an int
constexpr int kMinSplitTiles = 4;                      // K tiles per split at least
constexpr int kMaxSplits = 16;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline bool aligned(const void* p, uintptr_t n) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % n == 0; }

// Throws std::invalid_argument for arguments the CUDA kernel cannot take. Returns whether there is work.
inline bool check_linear_args(const Sparse24LinearArgs& a, const char* op) {
  TF_CHECK_ARG(a.dtype == kBFloat16 || a.dtype == kFloat16, op, ": x dtype ", dtype_name(a.dtype), " (code ",
               a.dtype, ") is not supported; the CUDA kernel supports bfloat16/float16 (use the cpu or torch "
               "backend for float32)");
  TF_CHECK_ARG(a.values_dtype != kInt8, op, ": int8 (weight-only) values are not supported; the CUDA kernel "
               "supports bfloat16/float16 values (use another backend for int8)");
  TF_CHECK_ARG(a.values_dtype == a.dtype, op, ": values dtype ", dtype_name(a.values_dtype), " (code ",
               a.values_dtype, ") must equal x's dtype ", dtype_name(a.dtype), "; the CUDA kernel supports "
               "bfloat16/float16");
  TF_CHECK_ARG(a.scale == nullptr, op, ": scale is only used with int8 values, got a scale with ",
               dtype_name(a.values_dtype), " values");
  TF_CHECK_ARG(a.M >= 0 && a.N >= 0 && a.K >= 0, op, ": M, N, K must be >= 0, got ", a.M, ", ", a.N, ", ", a.K);
  TF_CHECK_ARG(a.K % 4 == 0, op, ": K must be a multiple of 4 (2:4 groups), got ", a.K);
  TF_CHECK_ARG(a.M <= kMaxDim && a.N <= kMaxDim && a.K <= kMaxDim, op, ": M, N, K must be <= ", kMaxDim, ", got ",
               a.M, ", ", a.N, ", ", a.K);
  const bool work = a.M > 0 && a.N > 0;
  if (work) {
    TF_CHECK_ARG(a.y != nullptr, op, ": y is a null pointer");
    TF_CHECK_ARG(aligned(a.y, 2), op, ": y is not aligned to its element size (2 bytes)");
    TF_CHECK_ARG(a.M <= 1 || a.y_stride >= a.N, op, ": y row stride ", a.y_stride, " is smaller than N = ", a.N);
    TF_CHECK_ARG(aligned(a.bias, 4), op, ": bias is not 4-byte aligned");
    if (a.K > 0) {
      TF_CHECK_ARG(a.x != nullptr && a.values != nullptr && a.meta != nullptr, op,
                   ": x, values or meta is a null pointer");
      TF_CHECK_ARG(aligned(a.x, 2) && aligned(a.values, 2), op,
                   ": x and values must be aligned to their element size (2 bytes)");
      TF_CHECK_ARG(a.M <= 1 || a.x_stride >= a.K, op, ": x row stride ", a.x_stride, " is smaller than K = ", a.K);
    }
  }
  return work;
}

// Kernel parameters (valid arguments with work); splits = 1, no workspace yet.
inline SpParams make_linear_params(const Sparse24LinearArgs& a) {
  SpParams p{};
  p.x = static_cast<const uint16_t*>(a.x);
  p.w = static_cast<const uint16_t*>(a.values);
  p.meta = a.meta;
  p.y = static_cast<uint16_t*>(a.y);
  p.bias = a.bias;
  // A single row's stride is never used (nor checked): 0 keeps the alignment tests honest.
  p.x_stride = a.M > 1 ? a.x_stride : 0;
  p.y_stride = a.M > 1 ? a.y_stride : 0;
  p.meta_stride = (a.K + 7) / 8;
  p.M = static_cast<int>(a.M);
  p.N = static_cast<int>(a.N);
  p.K = static_cast<int>(a.K);
  p.k_tiles = static_cast<int>(ceil_div(a.K, kBK));
  p.splits = 1;
  p.y_vec = (aligned(a.y, 8) && p.y_stride % 4 == 0) ? 1 : 0;
  return p;
}

// cp.async path: whole k32 steps, 16-byte aligned value / x rows, 4-byte aligned metadata rows.
inline bool linear_async_ok(const Sparse24LinearArgs& a, const SpParams& p) {
  return a.K % 32 == 0 && aligned(a.values, 16) && aligned(a.x, 16) && p.x_stride % 8 == 0 && aligned(a.meta, 4);
}

template <class C>
int64_t tiles_of(const SpParams& p) {
  return ceil_div(p.M, C::TM) * ceil_div(p.N, C::TN);
}

enum class LinearPath { kSmall, kMid, kLarge, kGeneric };

// Decode-like M streams the weight with narrow tiles; otherwise the large tile when it fills the GPU.
inline LinearPath pick_path(const SpParams& p, bool async_ok, int sms) {
  if (!async_ok) return LinearPath::kGeneric;
  if (p.M <= 16) return LinearPath::kSmall;
  if (p.M <= 64) return LinearPath::kMid;
  return tiles_of<CfgLarge>(p) >= sms ? LinearPath::kLarge : LinearPath::kMid;
}

// Splits that fill the GPU (one CTA per SM streams the weight well) when the tiles alone do not.
inline int pick_splits(int64_t tiles, int k_tiles, int sms) {
  if (tiles >= sms || k_tiles < 2 * kMinSplitTiles) return 1;
  const int64_t want = ceil_div(sms, tiles);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, k_tiles / kMinSplitTiles, kMaxSplits})));
}

inline bool check_nm_args(const NMMaskArgs& a, const char* op) {
  TF_CHECK_ARG(a.dtype == kFloat32 || a.dtype == kBFloat16 || a.dtype == kFloat16, op,
               ": scores must be float32, bfloat16 or float16, got dtype code ", a.dtype, " (",
               dtype_name(a.dtype), ")");
  TF_CHECK_ARG(a.m >= 1 && a.m <= 16, op, ": m must be in 1..16, got ", a.m);
  TF_CHECK_ARG(a.n >= 1 && a.n <= a.m, op, ": n must be in 1..m = ", a.m, ", got ", a.n);
  TF_CHECK_ARG(a.rows >= 0 && a.cols >= 0, op, ": rows and cols must be >= 0, got ", a.rows, ", ", a.cols);
  TF_CHECK_ARG(a.cols % a.m == 0, op, ": cols = ", a.cols, " is not a multiple of m = ", a.m);
  const bool work = a.rows > 0 && a.cols > 0;
  if (work) {
    TF_CHECK_ARG(a.scores != nullptr && a.mask != nullptr, op, ": scores or mask is a null pointer");
    TF_CHECK_ARG(a.rows <= 1 || a.s_stride >= a.cols, op, ": scores row stride ", a.s_stride,
                 " is smaller than cols = ", a.cols);
    TF_CHECK_ARG(aligned(a.scores, a.dtype == kFloat32 ? 4 : 2), op,
                 ": scores are not aligned to their element size");
  }
  return work;
}

inline NMParams make_nm_params(const NMMaskArgs& a) {
  NMParams p{};
  p.scores = a.scores;
  p.mask = a.mask;
  p.s_stride = a.rows > 1 ? a.s_stride : 0;
  p.rows = a.rows;
  p.cols = a.cols;
  p.groups_per_row = a.cols / a.m;
  p.n = a.n;
  p.m = a.m;
  p.vec4 = (a.m == 4 && aligned(a.mask, 4)) ? 1 : 0;
  return p;
}

// ---------------------------------------------------------------------------
// Kernels and host side

template <class C, bool kBF16, bool kAsync>
__global__ void __launch_bounds__(C::kThreads, C::MIN_BLOCKS) sparse24_linear_kernel(const SpParams p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  uint8_t* smem = ptx::dynamic_smem();
  sparse24_cta<C, kBF16, kAsync>(p, static_cast<int>(threadIdx.x), static_cast<int>(blockIdx.x),
                                 static_cast<int>(blockIdx.y), smem_addr(smem));
#else
  __trap();  // mma.sp needs sm_80; the host side refuses older devices
#endif
}

constexpr int kNMThreads = 256;

template <int DT, int MG>
__global__ void __launch_bounds__(kNMThreads) nm_mask_kernel(const NMParams p) {
  const int64_t total = p.rows * p.groups_per_row;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x)
    nm_mask_group<DT, MG>(p, g);
}

// Split-K workspace of a launch with tile config C: fp32 partial tiles, then one arrival counter per tile.
template <class C>
int64_t workspace_bytes_of(const SpParams& p, int sms, int* splits = nullptr) {
  const int64_t tiles = tiles_of<C>(p);
  const int sp = pick_splits(tiles, p.k_tiles, sms);
  if (splits) *splits = sp;
  return sp > 1 ? tiles * sp * C::TM * C::TN * int64_t(sizeof(float)) + tiles * int64_t(sizeof(unsigned)) : 0;
}

template <class C, bool kBF16, bool kAsync>
void launch_linear(SpParams p, void* ws, int64_t ws_bytes, int device, int sms, cudaStream_t s, const char* op) {
  const int64_t tiles = tiles_of<C>(p);
  TF_CHECK_ARG(tiles <= INT_MAX, op, ": M x N = ", p.M, " x ", p.N, " needs more thread blocks than a grid holds");
  const int64_t need = workspace_bytes_of<C>(p, sms, &p.splits);
  TF_CHECK_ARG(ws_bytes >= need && (need == 0 || ws != nullptr), op, ": workspace has ", ws_bytes,
               " bytes, needs ", need, " (sparse24_linear_workspace_bytes)");
  if (p.splits > 1) {
    const int64_t part_bytes = tiles * p.splits * C::TM * C::TN * int64_t(sizeof(float));
    p.ws = static_cast<float*>(ws);
    p.counters = reinterpret_cast<unsigned*>(static_cast<char*>(ws) + part_bytes);
    check_cuda(cudaMemsetAsync(p.counters, 0, static_cast<size_t>(tiles) * sizeof(unsigned), s), op,
               "cudaMemsetAsync(split-K counters)");
  }
  auto kernel = sparse24_linear_kernel<C, kBF16, kAsync>;
  // The shared-memory opt-in is per device and function: set it once per device (first 64).
  static std::atomic<uint64_t> smem_set{0};
  const bool cacheable = device >= 0 && device < 64;
  if (!cacheable || !((smem_set.load(std::memory_order_relaxed) >> device) & 1u)) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem), op,
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
    if (cacheable) smem_set.fetch_or(uint64_t(1) << device, std::memory_order_relaxed);
  }
  TF_LAUNCH_NAMED("sparse24_linear_kernel", dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(p.splits)),
                  C::kThreads, C::kSmem, s, kernel)(p);
  check_launch(op, "sparse24_linear_kernel");
}

template <bool kBF16>
void launch_linear_path(const SpParams& p, LinearPath path, void* ws, int64_t ws_bytes, int device, int sms,
                        cudaStream_t s, const char* op) {
  switch (path) {
    case LinearPath::kSmall: launch_linear<CfgSmall, kBF16, true>(p, ws, ws_bytes, device, sms, s, op); break;
    case LinearPath::kMid: launch_linear<CfgMid, kBF16, true>(p, ws, ws_bytes, device, sms, s, op); break;
    case LinearPath::kLarge: launch_linear<CfgLarge, kBF16, true>(p, ws, ws_bytes, device, sms, s, op); break;
    default:  // any K % 4, any alignment
      launch_linear<CfgMid, kBF16, false>(p, ws, ws_bytes, device, sms, s, op);
      break;
  }
}

int64_t path_workspace_bytes(const SpParams& p, LinearPath path, int sms) {
  switch (path) {
    case LinearPath::kSmall: return workspace_bytes_of<CfgSmall>(p, sms);
    case LinearPath::kLarge: return workspace_bytes_of<CfgLarge>(p, sms);
    default: return workspace_bytes_of<CfgMid>(p, sms);
  }
}

}  // namespace

int64_t sparse24_linear_workspace_bytes(const Sparse24LinearArgs& a, int device) {
  const char* op = "sparse24_linear (cuda)";
  if (!check_linear_args(a, op)) return 0;
  require_device_index(device, op);
  const int sms = sm_count(device, op);
  const SpParams p = make_linear_params(a);
  return path_workspace_bytes(p, pick_path(p, linear_async_ok(a, p), sms), sms);
}

void sparse24_linear(const Sparse24LinearArgs& a, void* workspace, int64_t workspace_bytes, int device,
                     uintptr_t stream) {
  const char* op = "sparse24_linear (cuda)";
  const bool work = check_linear_args(a, op);
  DeviceGuard guard(device, op);
  if (!work) return;
  int major = 0;
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), op,
             "cudaDeviceGetAttribute(computeCapabilityMajor)");
  TF_CHECK_RUNTIME(major >= 8, op, ": needs a GPU with compute capability 8.0 or newer (sparse tensor cores); "
                   "device ", device, " has ", major, ".x");
  const int sms = sm_count(device, op);

  const SpParams p = make_linear_params(a);
  const LinearPath path = pick_path(p, linear_async_ok(a, p), sms);
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  (void)cudaGetLastError();  // do not report someone else's stale error as ours
  if (a.dtype == kBFloat16) launch_linear_path<true>(p, path, workspace, workspace_bytes, device, sms, s, op);
  else launch_linear_path<false>(p, path, workspace, workspace_bytes, device, sms, s, op);
}

void nm_mask(const NMMaskArgs& a, int device, uintptr_t stream) {
  const char* op = "nm_mask (cuda)";
  const bool work = check_nm_args(a, op);
  DeviceGuard guard(device, op);
  if (!work) return;
  const int sms = sm_count(device, op);

  const NMParams p = make_nm_params(a);
  const int64_t total = a.rows * p.groups_per_row;
  const unsigned grid =
      static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(total, kNMThreads), int64_t(sms) * 16)));

  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  (void)cudaGetLastError();
  const bool m4 = a.m == 4;
  switch (a.dtype) {
    case kFloat32:
      if (m4) TF_LAUNCH(grid, kNMThreads, 0, s, nm_mask_kernel<kFloat32, 4>)(p);
      else TF_LAUNCH(grid, kNMThreads, 0, s, nm_mask_kernel<kFloat32, 0>)(p);
      break;
    case kBFloat16:
      if (m4) TF_LAUNCH(grid, kNMThreads, 0, s, nm_mask_kernel<kBFloat16, 4>)(p);
      else TF_LAUNCH(grid, kNMThreads, 0, s, nm_mask_kernel<kBFloat16, 0>)(p);
      break;
    default:
      if (m4) TF_LAUNCH(grid, kNMThreads, 0, s, nm_mask_kernel<kFloat16, 4>)(p);
      else TF_LAUNCH(grid, kNMThreads, 0, s, nm_mask_kernel<kFloat16, 0>)(p);
      break;
  }
  check_launch(op, "nm_mask_kernel");
}

}  // namespace tforge::cuda
