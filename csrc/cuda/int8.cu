// Int8 GEMM (W8A8) and per-row int8 quantisation on CUDA (sm_80, sm_90a).
// Semantics: common/int8_args.h.
//
// GEMM, tensor-core path (a, b and both row strides 16-byte aligned, any K):
// a CTA computes a BM x BN tile of acc = a @ b^T with
// mma.sync.m16n8k32.row.col.s32.s8.s8.s32. Both operands are K-major ([M, K]
// and [N, K] rows), which is exactly what "row.col" wants, so A and B
// fragments come straight from shared memory with ldmatrix (no transpose).
// Global -> shared copies are 16-byte cp.async in a STAGES-deep ring with one
// __syncthreads per K tile, placed (as in CUTLASS's multistage kernels) before
// the tile's last k step so that the next tile's first fragments load while
// that step's mma run; fragments are double-buffered in registers. Rows past
// M / N and bytes past K are zero-filled by the copy itself (src-size < 16),
// which is exact for an integer dot product. Shared rows are BK bytes with
// the 16-byte chunks XOR-swizzled by row, so ldmatrix and the cp.async stores
// are free of bank conflicts. Warps split the tile WM x WN, and for the
// small-M config also K (WK): such warps each own a K slice of every stage
// and their int32 partials are added through shared memory at the end
// (integer sums: order does not matter). Epilogue straight from the
// accumulator fragments: int32 out, or fp32 acc * a_scale[m] * b_scale[n] +
// bias[n] with the reference's rounding steps (no FMA contraction), cast to
// fp32 / bf16 / fp16 round-to-nearest-even.
// Tiles are visited in groups of kGroupM tile rows (L2 reuse).
//
// Configs: 128x256x64 / 8 warps (64x64 each) / 4 stages for large problems,
// 64x128x64 / 4 warps (32x64) / 4 stages for middling ones, and for M <= 16
// (decode; bound by streaming b) 16x32x128 / 4 warps (2 along N, 2 along K)
// / 8 stages, which keeps many CTAs and bytes in flight.
//
// GEMM, fallback (misaligned pointers or strides): 64x64 tiles, byte loads
// into shared memory, __dp4a, same epilogue. Correct for everything, slow.
//
// Quantisation: a group of `tpr` threads per row (power-of-two sub-warps for
// short rows, a whole block for long ones), 16-byte loads when aligned, the
// row held in registers between the absmax pass and the quantise pass when it
// fits (re-read otherwise), NaN-propagating absmax (a row with a NaN gets a
// NaN scale and q = 0), q = __float2int_rn(x / scale) (IEEE division, as the
// reference) clamped to [-127, 127], q = 0 on rows whose scale is 0.
#include "cuda/int8.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "common/checks.h"
#include "common/cuda_utils.h"
#include "common/dtype.h"
#include "cuda/ptx.cuh"

namespace tforge::cuda {
namespace {

// M, N and K stay below this so every in-kernel row / column / K index (tile
// origin + tile size included) fits an int.
constexpr int64_t kMaxDim = int64_t(INT_MAX) - 1024;
constexpr int kGroupM = 8;  // tile rows per raster group

// ---------------------------------------------------------------------------
// Primitives (the PTX itself lives in cuda/ptx.cuh)

using ptx::cp_async_commit;
using ptx::cp_async_wait;
using ptx::ldmatrix_x4;
using ptx::smem_u32;

// ---------------------------------------------------------------------------
// Tile configs and the index math shared by the kernels (host-callable, so it can be emulated)

template <int BM_, int BN_, int BK_, int WM_, int WN_, int WK_, int STAGES_, int MIN_BLOCKS_>
struct TileCfg {
  static constexpr int BM = BM_, BN = BN_, BK = BK_;     // CTA tile (BK in int8 elements = bytes)
  static constexpr int WM = WM_, WN = WN_, WK = WK_;     // warps along M, N, K
  static constexpr int STAGES = STAGES_, MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int kWarps = WM * WN * WK, kThreads = 32 * kWarps;
  static constexpr int kWarpM = BM / WM, kWarpN = BN / WN, kWarpK = BK / WK;  // per-warp tile
  static constexpr int kMT = kWarpM / 16, kNT = kWarpN / 8, kKS = kWarpK / 32;  // mma tiles / k steps
  static constexpr int kCPR = BK / 16;            // 16-byte chunks per shared row
  static constexpr int kRowStep = kThreads / kCPR;  // rows one pass of the CTA's copies covers
  static constexpr int kAIters = BM / kRowStep, kBIters = BN / kRowStep;
  static constexpr int kStageBytes = (BM + BN) * BK;
  static constexpr int kAcc = kMT * kNT * 4;
  static constexpr int kRedBytes = (WK - 1) * WM * WN * kAcc * 32 * 4;
  static constexpr int kSmem = STAGES * kStageBytes > kRedBytes ? STAGES * kStageBytes : kRedBytes;

  static_assert(BK == 64 || BK == 128, "swizzle is defined for 64- and 128-byte rows");
  static_assert(BM % WM == 0 && BN % WN == 0 && BK % WK == 0, "warp split");
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0 && kWarpK % 32 == 0, "warp tile vs mma shape");
  static_assert(kThreads % kCPR == 0 && BM % kRowStep == 0 && BN % kRowStep == 0, "copy split");
  static_assert(kRowStep % 8 == 0, "copies keep the swizzle phase of their first row");
  static_assert(kKS % 2 == 0, "fragment double buffering alternates buffers within a stage");
  static_assert(STAGES >= 3, "pipeline depth (the loop waits for tile kt + 1 while tile kt + STAGES - 1 loads)");
};

using CfgLarge = TileCfg<128, 256, 64, 2, 4, 1, 4, 1>;  // 96 KiB smem, 8 warps of 64x64
using CfgMid = TileCfg<64, 128, 64, 2, 2, 1, 4, 2>;     // 48 KiB smem, 4 warps of 32x64
using CfgSmall = TileCfg<16, 32, 128, 1, 2, 2, 8, 3>;   // 48 KiB smem, 4 warps of 16x16, K split 2 ways

// XOR swizzle of the 16-byte chunk index by row: 8 consecutive rows (one ldmatrix matrix, or 8
// copies of one chunk column) hit 8 different 16-byte bank groups. 64-byte rows: two rows per
// 128-byte bank line, so the phase is (row / 2) % 4; 128-byte rows: row % 8. Period 8 in row.
template <int BK>
__host__ __device__ __forceinline__ int swizzle(int row) {
  return BK == 64 ? (row >> 1) & 3 : row & 7;
}

// Byte offset of (row, 16-byte chunk) inside one operand's tile of a stage.
template <int BK>
__host__ __device__ __forceinline__ int smem_offset(int row, int chunk) {
  return row * BK + ((chunk ^ swizzle<BK>(row)) << 4);
}

// Copies: thread tid moves chunk tid % kCPR of rows tid / kCPR + i * kRowStep.
template <class C>
__host__ __device__ __forceinline__ int copy_row(int tid, int i) {
  return tid / C::kCPR + i * C::kRowStep;
}
template <class C>
__host__ __device__ __forceinline__ int copy_chunk(int tid) {
  return tid % C::kCPR;
}

// ldmatrix row / chunk a lane addresses, for an A fragment (16 rows x 32 k at row0, chunk0:
// matrices (rows 0-7, k 0-15), (rows 8-15, k 0-15), (rows 0-7, k 16-31), (rows 8-15, k 16-31) =
// a[0..3]) and for two B fragments (n rows n0..n0+15: matrices (n 0-7, k 0-15), (n 0-7, k 16-31),
// (n 8-15, k 0-15), (n 8-15, k 16-31) = b[0], b[1] of n tile 0, b[0], b[1] of n tile 1).
__host__ __device__ __forceinline__ int ldsm_a_row(int lane) { return lane & 15; }
__host__ __device__ __forceinline__ int ldsm_a_chunk(int lane) { return lane >> 4; }
__host__ __device__ __forceinline__ int ldsm_b_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
__host__ __device__ __forceinline__ int ldsm_b_chunk(int lane) { return (lane >> 3) & 1; }

// Grouped raster: tile pid -> (tile row, tile column), kGroupM tile rows at a time.
__host__ __device__ __forceinline__ void tile_coords(int pid, int tiles_m, int tiles_n, int& tm, int& tn) {
  const int per_group = kGroupM * tiles_n;
  const int group = pid / per_group;
  const int first_m = group * kGroupM;
  const int rows = tiles_m - first_m < kGroupM ? tiles_m - first_m : kGroupM;
  const int in_group = pid - group * per_group;
  tm = first_m + in_group % rows;
  tn = in_group / rows;
}

// ---------------------------------------------------------------------------
// Epilogue

struct GemmParams {
  const int8_t* a;      // [M, a_stride]
  const int8_t* b;      // [N, b_stride]
  int64_t a_stride, b_stride;
  int M, N, K;
  int32_t* c_i32;       // [M, N] (int32 output)
  void* c;              // [M, N] OutT (fused output)
  const float* a_scale;  // [M] or null
  const float* b_scale;  // [N]
  const float* bias;     // [N] or null
  int vec2;             // outputs (m, n), (m, n + 1) with n even may be stored as one access
};

// Per-column epilogue constants.
struct ColEpi {
  float s0, s1, b0, b1;
};

__device__ __forceinline__ float dequant(int v, float sa, float sb, float bb, bool has_a, bool has_bias) {
  // acc * a_scale * b_scale + bias, rounded after every step like the fp32 reference.
  float f = __int2float_rn(v);
  if (has_a) f = __fmul_rn(f, sa);
  f = __fmul_rn(f, sb);
  if (has_bias) f = __fadd_rn(f, bb);
  return f;
}

template <class OutT>
__device__ __forceinline__ void store_one(OutT* c, float f);
template <>
__device__ __forceinline__ void store_one<float>(float* c, float f) { *c = f; }
template <>
__device__ __forceinline__ void store_one<__nv_bfloat16>(__nv_bfloat16* c, float f) { *c = __float2bfloat16_rn(f); }
template <>
__device__ __forceinline__ void store_one<__half>(__half* c, float f) { *c = __float2half_rn(f); }

template <class OutT>
__device__ __forceinline__ void store_two(OutT* c, float f0, float f1);
template <>
__device__ __forceinline__ void store_two<float>(float* c, float f0, float f1) {
  *reinterpret_cast<float2*>(c) = make_float2(f0, f1);
}
template <>
__device__ __forceinline__ void store_two<__nv_bfloat16>(__nv_bfloat16* c, float f0, float f1) {
  *reinterpret_cast<__nv_bfloat162*>(c) = __floats2bfloat162_rn(f0, f1);
}
template <>
__device__ __forceinline__ void store_two<__half>(__half* c, float f0, float f1) {
  *reinterpret_cast<__half2*>(c) = __floats2half2_rn(f0, f1);
}

__device__ __forceinline__ ColEpi load_cols(const GemmParams& p, int n) {
  ColEpi e{0.f, 0.f, 0.f, 0.f};
  if (n < p.N) {
    e.s0 = p.b_scale[n];
    if (p.bias) e.b0 = p.bias[n];
  }
  if (n + 1 < p.N) {
    e.s1 = p.b_scale[n + 1];
    if (p.bias) e.b1 = p.bias[n + 1];
  }
  return e;
}

// Outputs (m, n) and (m, n + 1) from acc values v0, v1 (either may lie outside the matrix).
// sa: a_scale[m] (ignored when a_scale is null); e: the columns' b_scale / bias (fused only).
template <class OutT>
__device__ __forceinline__ void store_pair(const GemmParams& p, int m, int n, int v0, int v1, float sa,
                                           const ColEpi& e) {
  if (m >= p.M || n >= p.N) return;
  const int64_t off = static_cast<int64_t>(m) * p.N + n;
  const bool both = n + 1 < p.N;
  if constexpr (std::is_same_v<OutT, int32_t>) {
    int32_t* c = p.c_i32 + off;
    if (both && p.vec2) {
      *reinterpret_cast<int2*>(c) = make_int2(v0, v1);
    } else {
      c[0] = v0;
      if (both) c[1] = v1;
    }
  } else {
    const bool has_a = p.a_scale != nullptr, has_bias = p.bias != nullptr;
    OutT* c = static_cast<OutT*>(p.c) + off;
    const float f0 = dequant(v0, sa, e.s0, e.b0, has_a, has_bias);
    const float f1 = dequant(v1, sa, e.s1, e.b1, has_a, has_bias);
    if (both && p.vec2) {
      store_two<OutT>(c, f0, f1);
    } else {
      store_one<OutT>(c, f0);
      if (both) store_one<OutT>(c + 1, f1);
    }
  }
}

__device__ __forceinline__ float row_scale(const GemmParams& p, int m) {
  return (p.a_scale != nullptr && m < p.M) ? p.a_scale[m] : 1.f;
}

// ---------------------------------------------------------------------------
// Tensor-core GEMM

// One thread's share of the global -> shared copies: chunk `chunk` of rows row0 + i * kRowStep
// of the A and B tiles. Pointers and the K offset advance by BK per tile.
template <class C>
struct Copier {
  const int8_t* a;   // row row0 of the A tile, at this thread's chunk of the next K tile
  const int8_t* b;
  int64_t a_step, b_step;  // kRowStep rows
  uint32_t a_rows, b_rows;  // bit i: row row0 + i * kRowStep lies inside the matrix
  int k;                    // K index of this thread's chunk in the next tile
  int s_off;                // byte offset of (row0, chunk) in a stage's A / B tile

  __device__ __forceinline__ Copier(const GemmParams& p, int tid, int m0, int n0) {
    const int row0 = copy_row<C>(tid, 0), chunk = copy_chunk<C>(tid);
    a_rows = b_rows = 0;
#pragma unroll
    for (int i = 0; i < C::kAIters; ++i) a_rows |= (m0 + row0 + i * C::kRowStep < p.M ? 1u : 0u) << i;
#pragma unroll
    for (int i = 0; i < C::kBIters; ++i) b_rows |= (n0 + row0 + i * C::kRowStep < p.N ? 1u : 0u) << i;
    // Rows past the end are never read (their copies are zero-fills from the base pointer); clamp
    // so that no pointer leaves the allocation.
    a = p.a + static_cast<int64_t>(min(m0 + row0, p.M - 1)) * p.a_stride + chunk * 16;
    b = p.b + static_cast<int64_t>(min(n0 + row0, p.N - 1)) * p.b_stride + chunk * 16;
    a_step = static_cast<int64_t>(C::kRowStep) * p.a_stride;
    b_step = static_cast<int64_t>(C::kRowStep) * p.b_stride;
    k = chunk * 16;
    s_off = smem_offset<C::BK>(row0, chunk);  // rows i * kRowStep further: same swizzle phase
  }

  // Issues the copies of the next K tile into the stage at s_a (B tile at s_a + BM * BK).
  __device__ __forceinline__ void load(const GemmParams& p, uint32_t s_a) {
    const int kbytes = min(max(p.K - k, 0), 16);
#pragma unroll
    for (int i = 0; i < C::kAIters; ++i) {
      const bool ok = ((a_rows >> i) & 1u) && kbytes > 0;
      ptx::cp_async_16_zfill(s_a + s_off + i * C::kRowStep * C::BK, ok ? a + i * a_step : p.a, ok ? kbytes : 0);
    }
#pragma unroll
    for (int i = 0; i < C::kBIters; ++i) {
      const bool ok = ((b_rows >> i) & 1u) && kbytes > 0;
      ptx::cp_async_16_zfill(s_a + C::BM * C::BK + s_off + i * C::kRowStep * C::BK, ok ? b + i * b_step : p.b,
                 ok ? kbytes : 0);
    }
    a += C::BK;
    b += C::BK;
    k += C::BK;
  }
};

// The warp's A and B fragments for one k step of 32.
template <class C>
struct Frags {
  uint32_t a[C::kMT][4];
  uint32_t b[C::kNT / 2][4];  // pair j: b[0], b[1] of n tile 2j, then of n tile 2j + 1
};

// a_off / b_off: the lane's ldmatrix byte offsets (k step ks, m tile 0 / n tile pair 0) in a stage;
// the swizzle has period 8 in row, so further tiles are plain multiples of 16 rows away.
template <class C>
__device__ __forceinline__ void load_frags(Frags<C>& f, uint32_t stage, int a_off, int b_off) {
#pragma unroll
  for (int mt = 0; mt < C::kMT; ++mt) ldmatrix_x4(f.a[mt], stage + a_off + mt * 16 * C::BK);
#pragma unroll
  for (int j = 0; j < C::kNT / 2; ++j) ldmatrix_x4(f.b[j], stage + b_off + j * 16 * C::BK);
}

template <class C>
__device__ __forceinline__ void mma_frags(int (&acc)[C::kMT][C::kNT][4], const Frags<C>& f) {
#pragma unroll
  for (int mt = 0; mt < C::kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < C::kNT; ++nt) {
      ptx::mma_m16n8k32_s8(acc[mt][nt], f.a[mt], f.b[nt >> 1][(nt & 1) * 2], f.b[nt >> 1][(nt & 1) * 2 + 1]);
    }
  }
}

template <class C, class OutT>
__global__ void __launch_bounds__(C::kThreads, C::MIN_BLOCKS) int8_gemm_kernel(const GemmParams p) {
  uint8_t* smem = ptx::dynamic_smem();
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31, warp = tid >> 5;
  const int wmn = warp % (C::WM * C::WN), wk = warp / (C::WM * C::WN);
  const int wm = wmn / C::WN, wn = wmn % C::WN;

  const int tiles_m = (p.M + C::BM - 1) / C::BM, tiles_n = (p.N + C::BN - 1) / C::BN;
  int tm, tn;
  tile_coords(static_cast<int>(blockIdx.x), tiles_m, tiles_n, tm, tn);
  const int m0 = tm * C::BM, n0 = tn * C::BN;

  const uint32_t s_base = smem_u32(smem);
  int a_off[C::kKS], b_off[C::kKS];
#pragma unroll
  for (int ks = 0; ks < C::kKS; ++ks) {
    const int kc = (wk * C::kWarpK + ks * 32) / 16;
    a_off[ks] = smem_offset<C::BK>(wm * C::kWarpM + ldsm_a_row(lane), kc + ldsm_a_chunk(lane));
    b_off[ks] = C::BM * C::BK + smem_offset<C::BK>(wn * C::kWarpN + ldsm_b_row(lane), kc + ldsm_b_chunk(lane));
  }

  int acc[C::kMT][C::kNT][4];
#pragma unroll
  for (int mt = 0; mt < C::kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < C::kNT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0;

  // Pipeline (CUTLASS "multistage" order): tiles 0 .. STAGES-2 in flight before the loop. In
  // iteration kt, before the last k step's mma, the thread issues tile kt + STAGES - 1 into the
  // stage read in iteration kt - 1, waits until tile kt + 1 has landed and passes the barrier
  // (which also orders every warp's reads of stage kt - 1 before those writes: they were all
  // issued before the previous barrier), then loads the next stage's first fragments while the
  // last mma batch runs. Fragments are double-buffered (kKS is even, so buffers are static).
  Copier<C> cp(p, tid, m0, n0);
  const int k_tiles = (p.K + C::BK - 1) / C::BK;
#pragma unroll
  for (int s = 0; s < C::STAGES - 1; ++s) {
    if (s < k_tiles) cp.load(p, s_base + s * C::kStageBytes);
    cp_async_commit();  // empty groups past the end keep the group count uniform
  }
  cp_async_wait<C::STAGES - 2>();
  __syncthreads();

  int read_stage = 0, write_stage = C::STAGES - 1;
  Frags<C> frag[2];
  load_frags<C>(frag[0], s_base, a_off[0], b_off[0]);
  for (int kt = 0; kt < k_tiles; ++kt) {
#pragma unroll
    for (int ks = 0; ks < C::kKS; ++ks) {
      if (ks == C::kKS - 1) {
        if (kt + C::STAGES - 1 < k_tiles) cp.load(p, s_base + write_stage * C::kStageBytes);
        cp_async_commit();
        cp_async_wait<C::STAGES - 2>();
        __syncthreads();
        read_stage = read_stage + 1 == C::STAGES ? 0 : read_stage + 1;
        write_stage = write_stage + 1 == C::STAGES ? 0 : write_stage + 1;
      }
      // Next fragments: k step ks + 1 of this stage, or step 0 of the next one (after the last
      // tile that stage holds stale data; the loads are harmless and their values unused).
      const int nks = ks + 1 == C::kKS ? 0 : ks + 1;
      load_frags<C>(frag[(ks + 1) & 1], s_base + read_stage * C::kStageBytes, a_off[nks], b_off[nks]);
      mma_frags<C>(acc, frag[ks & 1]);
    }
  }

  if constexpr (C::WK > 1) {
    // Add the K-split warps' partials through shared memory (the pipeline's, now idle).
    cp_async_wait<0>();
    __syncthreads();
    int* red = reinterpret_cast<int*>(smem);
    if (wk > 0) {
      int* dst = red + ((wk - 1) * (C::WM * C::WN) + wmn) * (C::kAcc * 32) + lane;
#pragma unroll
      for (int mt = 0; mt < C::kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < C::kNT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) dst[((mt * C::kNT + nt) * 4 + i) * 32] = acc[mt][nt][i];
    }
    __syncthreads();
    if (wk > 0) return;
#pragma unroll
    for (int w = 1; w < C::WK; ++w) {
      const int* src = red + ((w - 1) * (C::WM * C::WN) + wmn) * (C::kAcc * 32) + lane;
#pragma unroll
      for (int mt = 0; mt < C::kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < C::kNT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[mt][nt][i] += src[((mt * C::kNT + nt) * 4 + i) * 32];
    }
  }

  // Epilogue: lane (g, t) holds rows g, g + 8 and columns 2t, 2t + 1 of every mma tile.
  const int g = lane >> 2, t = lane & 3;
  const int row_base = m0 + wm * C::kWarpM + g;
  const int col_base = n0 + wn * C::kWarpN + 2 * t;
  float sa[C::kMT][2];
#pragma unroll
  for (int mt = 0; mt < C::kMT; ++mt) {
    sa[mt][0] = std::is_same_v<OutT, int32_t> ? 1.f : row_scale(p, row_base + mt * 16);
    sa[mt][1] = std::is_same_v<OutT, int32_t> ? 1.f : row_scale(p, row_base + mt * 16 + 8);
  }
#pragma unroll
  for (int nt = 0; nt < C::kNT; ++nt) {
    const int n = col_base + nt * 8;
    ColEpi e{};
    if constexpr (!std::is_same_v<OutT, int32_t>) e = load_cols(p, n);
#pragma unroll
    for (int mt = 0; mt < C::kMT; ++mt) {
      const int m = row_base + mt * 16;
      store_pair<OutT>(p, m, n, acc[mt][nt][0], acc[mt][nt][1], sa[mt][0], e);
      store_pair<OutT>(p, m + 8, n, acc[mt][nt][2], acc[mt][nt][3], sa[mt][1], e);
    }
  }
}

// ---------------------------------------------------------------------------
// Fallback GEMM (any alignment): 64x64 tiles, 256 threads of 4x4 outputs, __dp4a.

constexpr int kFbTile = 64, kFbK = 32, kFbThreads = 256;
constexpr int kFbWords = kFbK / 4 + 1;  // padded row (words): conflict-free column reads

template <class OutT>
__global__ void __launch_bounds__(kFbThreads) int8_gemm_fallback_kernel(const GemmParams p) {
  __shared__ int sa_tile[kFbTile][kFbWords];
  __shared__ int sb_tile[kFbTile][kFbWords];
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid & 15, ty = tid >> 4;
  const int tiles_m = (p.M + kFbTile - 1) / kFbTile, tiles_n = (p.N + kFbTile - 1) / kFbTile;
  int tm, tn;
  tile_coords(static_cast<int>(blockIdx.x), tiles_m, tiles_n, tm, tn);
  const int m0 = tm * kFbTile, n0 = tn * kFbTile;

  int acc[4][4] = {};
  for (int k0 = 0; k0 < p.K; k0 += kFbK) {
    for (int e = tid; e < kFbTile * kFbK; e += kFbThreads) {
      const int r = e / kFbK, k = e % kFbK;
      const bool kin = k0 + k < p.K;
      int8_t va = 0, vb = 0;
      if (kin && m0 + r < p.M) va = p.a[static_cast<int64_t>(m0 + r) * p.a_stride + k0 + k];
      if (kin && n0 + r < p.N) vb = p.b[static_cast<int64_t>(n0 + r) * p.b_stride + k0 + k];
      reinterpret_cast<int8_t*>(&sa_tile[r][0])[k] = va;
      reinterpret_cast<int8_t*>(&sb_tile[r][0])[k] = vb;
    }
    __syncthreads();
#pragma unroll
    for (int w = 0; w < kFbK / 4; ++w) {
      int av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = sa_tile[ty + 16 * i][w];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = sb_tile[tx + 16 * j][w];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = m0 + ty + 16 * i;
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = n0 + tx + 16 * j;
      if (n >= p.N) continue;
      const int64_t off = static_cast<int64_t>(m) * p.N + n;
      if constexpr (std::is_same_v<OutT, int32_t>) {
        p.c_i32[off] = acc[i][j];
      } else {
        const float f = dequant(acc[i][j], row_scale(p, m), p.b_scale[n], p.bias ? p.bias[n] : 0.f,
                                p.a_scale != nullptr, p.bias != nullptr);
        store_one<OutT>(static_cast<OutT*>(p.c) + off, f);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Quantisation

constexpr int kQBlock = 256;        // block size when a row needs <= 32 threads
constexpr int kQMaxRowThreads = 512;  // widest row group (one row per block)
constexpr int kQVecs = 4;           // vectors per thread per tile

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }

template <class T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};
template <int VEC>
struct alignas(VEC) QPack {
  int8_t v[VEC];
};

// max(|a|, |b|) that propagates NaN (as torch's amax does).
__device__ __forceinline__ float nan_max(float m, float v) { return (v > m || v != v) ? v : m; }

struct QuantParams {
  const void* x;   // [rows, x_stride]
  int8_t* q;       // [rows, cols]
  float* scale;    // [rows]
  int64_t x_stride, rows;
  int cols, tpr;
};

template <class T, int VEC>
__global__ void __launch_bounds__(kQMaxRowThreads) quantize_rows_kernel(const QuantParams p) {
  using P = Pack<T, VEC>;
  __shared__ float red[2][32];
  int phase = 0;
  const int tpr = p.tpr;
  const int lane = tpr > 32 ? static_cast<int>(threadIdx.x) : static_cast<int>(threadIdx.x) & (tpr - 1);
  const int group = tpr > 32 ? 0 : static_cast<int>(threadIdx.x) / tpr;
  const int groups = tpr > 32 ? 1 : static_cast<int>(blockDim.x) / tpr;
  const int nvec = p.cols / VEC;
  const int tile = tpr * kQVecs;
  const int ntiles = (nvec + tile - 1) / tile;  // 1: the row stays in registers

  for (int64_t base = static_cast<int64_t>(blockIdx.x) * groups; base < p.rows;
       base += static_cast<int64_t>(gridDim.x) * groups) {
    const int64_t row = base + group;
    const bool valid = row < p.rows;  // false only for trailing sub-warp groups
    const int64_t r = valid ? row : 0;
    const T* x = static_cast<const T*>(p.x) + r * p.x_stride;
    int8_t* q = p.q + r * p.cols;

    P c[kQVecs];
    float amax = 0.f;
    for (int t = 0; t < ntiles; ++t) {
#pragma unroll
      for (int k = 0; k < kQVecs; ++k) {
        const int j = t * tile + lane + k * tpr;
        if (valid && j < nvec) {
          c[k] = *reinterpret_cast<const P*>(x + static_cast<int64_t>(j) * VEC);
#pragma unroll
          for (int i = 0; i < VEC; ++i) amax = nan_max(amax, fabsf(to_f(c[k].v[i])));
        }
      }
    }
    // Group max: xor butterflies inside the (aligned, power-of-two) sub-warp, then across warps.
    for (int off = (tpr > 32 ? 16 : tpr >> 1); off > 0; off >>= 1)
      amax = nan_max(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    if (tpr > 32) {
      const int w = static_cast<int>(threadIdx.x) >> 5;
      if ((threadIdx.x & 31) == 0) red[phase][w] = amax;
      __syncthreads();  // buffers alternate, so one barrier per row suffices
      const int nw = static_cast<int>(blockDim.x) >> 5;
      amax = red[phase][0];
      for (int i = 1; i < nw; ++i) amax = nan_max(amax, red[phase][i]);
      phase ^= 1;
    }
    const float scale = __fdiv_rn(amax, 127.f);
    if (valid && lane == 0) p.scale[row] = scale;

    for (int t = 0; t < ntiles; ++t) {
#pragma unroll
      for (int k = 0; k < kQVecs; ++k) {
        const int j = t * tile + lane + k * tpr;
        if (valid && j < nvec) {
          if (ntiles > 1) c[k] = *reinterpret_cast<const P*>(x + static_cast<int64_t>(j) * VEC);
          QPack<VEC> o;
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            // scale == 0 means an all-zero row (or |x| so small that absmax / 127 underflows),
            // whose q is 0 by definition; a NaN quotient (NaN scale) gives 0 too.
            const float y = __fdiv_rn(to_f(c[k].v[i]), scale);
            const int v = min(max(__float2int_rn(y), -127), 127);
            o.v[i] = static_cast<int8_t>((scale == 0.f || y != y) ? 0 : v);
          }
          *reinterpret_cast<QPack<VEC>*>(q + static_cast<int64_t>(j) * VEC) = o;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Host side

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned(const void* p, uintptr_t n) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % n == 0; }

int out_size(int dtype) { return dtype == kFloat32 ? 4 : 2; }

template <class C>
int64_t tc_tiles(int64_t M, int64_t N) {
  return ceil_div(M, C::BM) * ceil_div(N, C::BN);
}

template <class C, class OutT>
void launch_tc(const GemmParams& p, cudaStream_t s, const char* op) {
  auto kernel = int8_gemm_kernel<C, OutT>;
  if (C::kSmem > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem), op,
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  }
  const int64_t tiles = tc_tiles<C>(p.M, p.N);
  TF_LAUNCH_NAMED("int8_gemm_kernel", static_cast<unsigned>(tiles), C::kThreads, C::kSmem, s, kernel)(p);
  check_launch(op, "int8_gemm_kernel");
}

template <class OutT>
void launch_fallback(const GemmParams& p, cudaStream_t s, const char* op) {
  const int64_t tiles = ceil_div(p.M, kFbTile) * ceil_div(p.N, kFbTile);
  TF_LAUNCH(static_cast<unsigned>(tiles), kFbThreads, 0, s, int8_gemm_fallback_kernel<OutT>)(p);
  check_launch(op, "int8_gemm_fallback_kernel");
}

enum class GemmPath { kFallback, kSmall, kMid, kLarge };

template <class OutT>
void launch_gemm(const GemmParams& p, GemmPath path, cudaStream_t s, const char* op) {
  switch (path) {
    case GemmPath::kSmall: launch_tc<CfgSmall, OutT>(p, s, op); break;
    case GemmPath::kMid: launch_tc<CfgMid, OutT>(p, s, op); break;
    case GemmPath::kLarge: launch_tc<CfgLarge, OutT>(p, s, op); break;
    default: launch_fallback<OutT>(p, s, op); break;
  }
}

// Decode-like M streams b: many small CTAs. Otherwise the largest tile that still fills the GPU.
GemmPath pick_path(int64_t M, int64_t N, bool tc_ok, int sms) {
  if (!tc_ok) return GemmPath::kFallback;
  if (M <= 16) return GemmPath::kSmall;
  if (M <= 64) return tc_tiles<CfgMid>(M, N) >= sms ? GemmPath::kMid : GemmPath::kSmall;
  return tc_tiles<CfgLarge>(M, N) >= sms ? GemmPath::kLarge : GemmPath::kMid;
}

}  // namespace

void int8_gemm(const Int8GemmArgs& a, int device, uintptr_t stream) {
  const char* op = "int8_gemm_cuda";
  TF_CHECK_ARG(a.M >= 0 && a.N >= 0 && a.K >= 0, op, ": M, N, K must be >= 0, got ", a.M, ", ", a.N, ", ", a.K);
  TF_CHECK_ARG(a.M <= kMaxDim && a.N <= kMaxDim && a.K <= kMaxDim, op, ": M, N, K must be <= ", kMaxDim, ", got ",
               a.M, ", ", a.N, ", ", a.K);
  const bool fused = a.c_i32 == nullptr;
  if (fused) {
    TF_CHECK_ARG(a.out_dtype == kFloat32 || a.out_dtype == kBFloat16 || a.out_dtype == kFloat16, op,
                 ": out_dtype must be float32, bfloat16 or float16, got dtype code ", a.out_dtype, " (",
                 dtype_name(a.out_dtype), ")");
  }
  const bool work = a.M > 0 && a.N > 0;
  if (work) {
    if (fused) {
      TF_CHECK_ARG(a.c != nullptr, op, ": c_i32 and c are both null pointers");
      TF_CHECK_ARG(aligned(a.c, out_size(a.out_dtype)), op, ": c is not aligned to its element size (",
                   out_size(a.out_dtype), " bytes)");
      TF_CHECK_ARG(a.b_scale != nullptr, op, ": the fused form needs b_scale (got a null pointer)");
      TF_CHECK_ARG(aligned(a.b_scale, 4) && aligned(a.a_scale, 4) && aligned(a.bias, 4), op,
                   ": a_scale, b_scale and bias must be 4-byte aligned");
    } else {
      TF_CHECK_ARG(aligned(a.c_i32, 4), op, ": c_i32 is not 4-byte aligned");
    }
    if (a.K > 0) {
      TF_CHECK_ARG(a.a != nullptr && a.b != nullptr, op, ": a or b is a null pointer");
      TF_CHECK_ARG(a.M <= 1 || a.a_stride >= a.K, op, ": a row stride ", a.a_stride, " is smaller than K = ", a.K);
      TF_CHECK_ARG(a.N <= 1 || a.b_stride >= a.K, op, ": b row stride ", a.b_stride, " is smaller than K = ", a.K);
    }
    const int64_t fb_tiles = ceil_div(a.M, kFbTile) * ceil_div(a.N, kFbTile);
    TF_CHECK_ARG(fb_tiles <= INT_MAX, op, ": M x N = ", a.M, " x ", a.N, " needs more thread blocks than a grid holds");
  }

  DeviceGuard guard(device, op);
  if (!work) return;
  const int sms = sm_count(device, op);

  GemmParams p{};
  p.a = a.a;
  p.b = a.b;
  // A single row's stride is never used (nor checked): 0 keeps the alignment test honest.
  p.a_stride = a.M > 1 ? a.a_stride : 0;
  p.b_stride = a.N > 1 ? a.b_stride : 0;
  p.M = static_cast<int>(a.M);
  p.N = static_cast<int>(a.N);
  p.K = static_cast<int>(a.K);
  p.c_i32 = a.c_i32;
  p.c = fused ? a.c : nullptr;
  p.a_scale = fused ? a.a_scale : nullptr;
  p.b_scale = fused ? a.b_scale : nullptr;
  p.bias = fused ? a.bias : nullptr;
  const int es = fused ? out_size(a.out_dtype) : 4;
  p.vec2 = (a.N % 2 == 0 && aligned(fused ? a.c : static_cast<void*>(a.c_i32), 2 * es)) ? 1 : 0;

  // cp.async moves 16 aligned bytes: every row start must be 16-byte aligned (K itself is free).
  const bool tc_ok = aligned(a.a, 16) && aligned(a.b, 16) && p.a_stride % 16 == 0 && p.b_stride % 16 == 0;
  const GemmPath path = pick_path(a.M, a.N, tc_ok, sms);

  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  (void)cudaGetLastError();  // do not report someone else's stale error as ours
  if (!fused) {
    launch_gemm<int32_t>(p, path, s, op);
    return;
  }
  switch (a.out_dtype) {
    case kFloat32: launch_gemm<float>(p, path, s, op); break;
    case kBFloat16: launch_gemm<__nv_bfloat16>(p, path, s, op); break;
    default: launch_gemm<__half>(p, path, s, op); break;
  }
}

void quantize_rows(const QuantizeRowsArgs& a, int device, uintptr_t stream) {
  const char* op = "quantize_rows_cuda";
  TF_CHECK_ARG(a.col_scale == nullptr, op, ": col_scale is not supported by the CUDA kernel (scale x first)");
  TF_CHECK_ARG(a.rows >= 0, op, ": rows must be >= 0, got ", a.rows);
  TF_CHECK_ARG(a.cols >= 1, op, ": the quantised (last) dimension must be >= 1, got ", a.cols);
  TF_CHECK_ARG(a.cols <= (int64_t(1) << 30), op, ": the quantised (last) dimension must be <= 2^30, got ", a.cols);
  TF_CHECK_ARG(a.dtype == kFloat32 || a.dtype == kBFloat16 || a.dtype == kFloat16, op,
               ": CUDA kernels take float32, bfloat16 or float16, got dtype code ", a.dtype, " (", dtype_name(a.dtype),
               ")");
  const int es = a.dtype == kFloat32 ? 4 : 2;
  if (a.rows > 0) {
    TF_CHECK_ARG(a.x != nullptr && a.q != nullptr && a.scale != nullptr, op, ": x, q or scale is a null pointer");
    TF_CHECK_ARG(a.rows <= 1 || a.x_stride >= a.cols, op, ": x row stride ", a.x_stride,
                 " is smaller than the row length ", a.cols);
    TF_CHECK_ARG(aligned(a.x, es), op, ": x is not aligned to its element size (", es, " bytes)");
    TF_CHECK_ARG(aligned(a.scale, 4), op, ": scale is not 4-byte aligned");
  }

  DeviceGuard guard(device, op);
  if (a.rows == 0) return;
  const int sms = sm_count(device, op);

  QuantParams p{};
  p.x = a.x;
  p.q = a.q;
  p.scale = a.scale;
  p.x_stride = a.rows > 1 ? a.x_stride : 0;
  p.rows = a.rows;
  p.cols = static_cast<int>(a.cols);

  // 16-byte loads when every row start is 16-byte aligned (and q rows take VEC-byte stores).
  const int V = 16 / es;
  const bool vec = a.cols % V == 0 && p.x_stride % V == 0 && aligned(a.x, 16) && aligned(a.q, V);
  const int64_t nvec = vec ? a.cols / V : a.cols;
  const int64_t need = ceil_div(nvec, kQVecs);  // threads that hold the row in one tile
  int threads;
  int64_t blocks;
  if (need <= 32) {
    int t = 1;
    while (t < need) t <<= 1;
    p.tpr = t;
    threads = kQBlock;
    blocks = ceil_div(a.rows, kQBlock / t);
  } else {
    p.tpr = threads = static_cast<int>(std::min<int64_t>(kQMaxRowThreads, ceil_div(need, 32) * 32));
    blocks = a.rows;
  }
  const unsigned grid = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(sms) * 32)));

  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  (void)cudaGetLastError();  // do not report someone else's stale error as ours
  switch (a.dtype) {
    case kFloat32:
      if (vec) TF_LAUNCH(grid, threads, 0, s, quantize_rows_kernel<float, 4>)(p);
      else TF_LAUNCH(grid, threads, 0, s, quantize_rows_kernel<float, 1>)(p);
      break;
    case kBFloat16:
      if (vec) TF_LAUNCH(grid, threads, 0, s, quantize_rows_kernel<__nv_bfloat16, 8>)(p);
      else TF_LAUNCH(grid, threads, 0, s, quantize_rows_kernel<__nv_bfloat16, 1>)(p);
      break;
    default:
      if (vec) TF_LAUNCH(grid, threads, 0, s, quantize_rows_kernel<__half, 8>)(p);
      else TF_LAUNCH(grid, threads, 0, s, quantize_rows_kernel<__half, 1>)(p);
      break;
  }
  check_launch(op, "quantize_rows_kernel");
}

}  // namespace tforge::cuda
