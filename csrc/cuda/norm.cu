// LayerNorm / RMSNorm forward and backward on CUDA (sm_80, sm_90a), plain or
// fused with a residual add. Same math as csrc/cpu/norm_kernels.h: fp32
// accumulation, mean and variance in two passes, the norm taken of the sum
// x + residual rounded to T (so normed == norm(residual_out) exactly).
//
// Row kernels (forward; backward dx): a group of `tpr` threads owns a row.
//   tpr <= 32: aligned power-of-two sub-warps, 128-thread blocks holding
//              several rows, xor-shuffle reductions;
//   tpr  > 32: one row per block (tpr == blockDim.x, a multiple of 32),
//              shuffles then shared memory.
// A thread handles vectors j = lane + k*tpr (16 bytes each when every
// pointer and stride allows it, else single elements) in tiles of K vectors
// per thread, loading a whole tile before using it. When the row is one tile
// (the host sizes tpr so that this holds up to 16K bf16 / 8K fp32 elements
// forward, half that backward, where x and dy are both held) it stays in
// registers between passes; otherwise each pass re-reads it (L1/L2). The
// block limits (512 threads forward, 256 backward, two blocks per SM) bound
// the registers (64 / 128) so that two one-row blocks per SM overlap each
// other's barriers. Rows are walked with a grid-stride loop; offsets are int64.
//
// dweight / dbias: a column kernel (32 columns x 8 row lanes per block) sums
// dy*xhat and dy over chunks of rows into fp32 partials [P, cols] in the
// caller's workspace, and a second kernel adds the P partials in a fixed
// order and writes T: deterministic for a given GPU (P depends on its SM
// count). They run before the dx kernel, so a dx that aliases dy or x is safe.
#include "cuda/norm.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/checks.h"
#include "common/cuda_utils.h"
#include "common/dtype.h"
#include "cuda/elementwise.cuh"
#include "cuda/ptx.cuh"

namespace tforge::cuda {
namespace {

constexpr int kWarpModeThreads = 128;            // block size when a row needs <= 32 threads
constexpr int kMaxFwdRowThreads = 512;           // widest row group (one row per block), forward
constexpr int kMaxBwdRowThreads = 256;           // and backward (x and dy both held: more registers)
constexpr int64_t kMaxCols = int64_t(1) << 30;   // keeps in-row vector indices in int
constexpr int kColTile = 32;                     // columns per block in the dweight/dbias kernels
constexpr int kColRowLanes = 8;                  // row lanes per block in the partials kernel
constexpr int kFinalLanes = 32;                  // partial lanes per block in the final kernel
constexpr int64_t kMinChunk = 32;                // rows per partial, at least
constexpr int64_t kMaxPartials = 1024;           // P, at most

// Vectors each thread holds per tile: 64 bytes of 16-byte vectors, or 8 scalars.
__host__ __device__ constexpr int tile_vecs(int vec) { return vec > 1 ? 4 : 8; }

// ---------------------------------------------------------------------------
// Element access (to_f, from_f, Pack, ld, st: cuda/elementwise.cuh)

// Rounds VEC floats to T (round to nearest even), two at a time for 16-bit types.
template <class T, int VEC>
__device__ __forceinline__ Pack<T, VEC> pack_of(const float (&f)[VEC]) {
  Pack<T, VEC> r;
  if constexpr (std::is_same_v<T, __nv_bfloat16> && VEC % 2 == 0) {
#pragma unroll
    for (int i = 0; i < VEC; i += 2) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(f[i], f[i + 1]);
      r.v[i] = h.x;
      r.v[i + 1] = h.y;
    }
  } else if constexpr (std::is_same_v<T, __half> && VEC % 2 == 0) {
#pragma unroll
    for (int i = 0; i < VEC; i += 2) {
      const __half2 h = __floats2half2_rn(f[i], f[i + 1]);
      r.v[i] = h.x;
      r.v[i + 1] = h.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) r.v[i] = from_f<T>(f[i]);
  }
  return r;
}

// 0 and 1 in T, as bit patterns (no conversion instruction).
template <class T>
__device__ __forceinline__ T t_const(bool one);
template <>
__device__ __forceinline__ float t_const<float>(bool one) { return one ? 1.f : 0.f; }
template <>
__device__ __forceinline__ __nv_bfloat16 t_const<__nv_bfloat16>(bool one) {
  return __ushort_as_bfloat16(one ? 0x3f80 : 0);
}
template <>
__device__ __forceinline__ __half t_const<__half>(bool one) { return __ushort_as_half(one ? 0x3c00 : 0); }

template <class T, int VEC>
__device__ __forceinline__ Pack<T, VEC> zero_pack() {
  Pack<T, VEC> r;
#pragma unroll
  for (int i = 0; i < VEC; ++i) r.v[i] = t_const<T>(false);
  return r;
}
template <class T, int VEC>
__device__ __forceinline__ Pack<T, VEC> one_pack() {
  Pack<T, VEC> r;
#pragma unroll
  for (int i = 0; i < VEC; ++i) r.v[i] = t_const<T>(true);
  return r;
}

// ---------------------------------------------------------------------------
// Row-group reduction: v[0..NV) summed over the group and returned to every
// thread of it (bitwise the same value everywhere: xor butterflies add the
// same two operands on both partners, and the block stage reads one buffer in
// one order). tpr <= 32: aligned power-of-two sub-warps, so xor offsets stay
// inside the group; tpr > 32: the whole block, through smem[2][32*NV]. The
// buffer alternates between calls (phase), so one barrier per call is enough:
// a buffer is rewritten two calls later, after every thread has passed the
// barrier of the call in between and so finished reading it. Every thread of
// the block must make the same calls (callers keep their loops uniform).
template <int NV>
__device__ __forceinline__ void group_sum(float (&v)[NV], int tpr, float* smem, int& phase) {
  if (tpr <= 32) {
    for (int off = tpr >> 1; off > 0; off >>= 1) {
#pragma unroll
      for (int i = 0; i < NV; ++i) v[i] += __shfl_xor_sync(0xffffffffu, v[i], off);
    }
    return;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
#pragma unroll
    for (int i = 0; i < NV; ++i) v[i] += __shfl_xor_sync(0xffffffffu, v[i], off);
  }
  float* buf = smem + phase * (32 * NV);
  const int warp = static_cast<int>(threadIdx.x >> 5);
  if ((threadIdx.x & 31) == 0) {
#pragma unroll
    for (int i = 0; i < NV; ++i) buf[warp * NV + i] = v[i];
  }
  __syncthreads();
  const int nw = static_cast<int>(blockDim.x >> 5);
#pragma unroll
  for (int i = 0; i < NV; ++i) v[i] = 0.f;
  for (int w = 0; w < nw; ++w) {
#pragma unroll
    for (int i = 0; i < NV; ++i) v[i] += buf[w * NV + i];
  }
  phase ^= 1;
}

// Where a thread sits: its row group and its lane in it.
struct RowGroup {
  int tpr, lane, group, groups_per_block;
  __device__ __forceinline__ explicit RowGroup(int tpr_) : tpr(tpr_) {
    if (tpr > 32) {  // one row per block, tpr == blockDim.x
      lane = static_cast<int>(threadIdx.x);
      group = 0;
      groups_per_block = 1;
    } else {  // tpr is a power of two dividing blockDim.x
      lane = static_cast<int>(threadIdx.x) & (tpr - 1);
      group = static_cast<int>(threadIdx.x) / tpr;
      groups_per_block = static_cast<int>(blockDim.x) / tpr;
    }
  }
};

// ---------------------------------------------------------------------------
// Forward

struct FwdParams {
  const void* x;         // [rows, x_stride]
  const void* res;       // [rows, res_stride] or null
  const void* w;         // [cols] or null
  const void* b;         // [cols] or null
  void* y;               // [rows, cols]
  void* res_out;         // [rows, cols] when res
  float* mean;           // [rows] (LayerNorm)
  float* rstd;           // [rows]
  int64_t x_stride, res_stride, rows;
  int cols, tpr;
  float eps, inv_n;
};

template <class T, bool RMS, int VEC>
__global__ void __launch_bounds__(kMaxFwdRowThreads, 2) norm_fwd_kernel(const FwdParams p) {
  constexpr int K = tile_vecs(VEC);
  using P = Pack<T, VEC>;
  __shared__ float red[2 * 32];
  int phase = 0;
  const RowGroup g(p.tpr);
  const int nvec = p.cols / VEC;
  const int tile = g.tpr * K;                        // vectors per tile
  const int ntiles = (nvec + tile - 1) / tile;       // 1: the row stays in registers
  const bool has_res = p.res != nullptr;
  const T* wp = static_cast<const T*>(p.w);
  const T* bp = static_cast<const T*>(p.b);

  for (int64_t base = static_cast<int64_t>(blockIdx.x) * g.groups_per_block; base < p.rows;
       base += static_cast<int64_t>(gridDim.x) * g.groups_per_block) {
    const int64_t row = base + g.group;
    const bool valid = row < p.rows;  // false only for trailing sub-warp groups
    const int64_t r = valid ? row : 0;
    const T* x = static_cast<const T*>(p.x) + r * p.x_stride;
    const T* res = has_res ? static_cast<const T*>(p.res) + r * p.res_stride : nullptr;
    T* res_out = has_res ? static_cast<T*>(p.res_out) + r * p.cols : nullptr;
    T* y = static_cast<T*>(p.y) + r * p.cols;
    const T* xs = has_res ? res_out : x;  // what is normalised (written by this thread in pass 1)

    P c[K];
    // Pass 1: load (and add the residual), sum x (LayerNorm) or x^2 (RMSNorm).
    float acc[1] = {0.f};
    for (int t = 0; t < ntiles; ++t) {
      const int j0 = t * tile + g.lane;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = j0 + k * g.tpr;
        c[k] = (valid && j < nvec) ? ld<T, VEC>(x + static_cast<int64_t>(j) * VEC) : zero_pack<T, VEC>();
      }
      if (has_res) {
        P rv[K];
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const int j = j0 + k * g.tpr;
          rv[k] = (valid && j < nvec) ? ld<T, VEC>(res + static_cast<int64_t>(j) * VEC) : zero_pack<T, VEC>();
        }
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const int j = j0 + k * g.tpr;
          float f[VEC];
#pragma unroll
          for (int i = 0; i < VEC; ++i) f[i] = to_f(c[k].v[i]) + to_f(rv[k].v[i]);
          c[k] = pack_of<T, VEC>(f);
          if (valid && j < nvec) st<T, VEC>(res_out + static_cast<int64_t>(j) * VEC, c[k]);
        }
      }
#pragma unroll
      for (int k = 0; k < K; ++k) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          const float v = to_f(c[k].v[i]);  // zero outside the row
          acc[0] = RMS ? fmaf(v, v, acc[0]) : acc[0] + v;
        }
      }
    }
    group_sum(acc, g.tpr, red, phase);

    float mean = 0.f, var;
    if constexpr (RMS) {
      var = acc[0] * p.inv_n;
    } else {
      mean = acc[0] * p.inv_n;
      // Pass 2: sum (x - mean)^2.
      float q[1] = {0.f};
      for (int t = 0; t < ntiles; ++t) {
        const int j0 = t * tile + g.lane;
        if (ntiles > 1) {
#pragma unroll
          for (int k = 0; k < K; ++k) {
            const int j = j0 + k * g.tpr;
            if (valid && j < nvec) c[k] = ld<T, VEC>(xs + static_cast<int64_t>(j) * VEC);
          }
        }
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const int j = j0 + k * g.tpr;
          if (valid && j < nvec) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
              const float d = to_f(c[k].v[i]) - mean;
              q[0] = fmaf(d, d, q[0]);
            }
          }
        }
      }
      group_sum(q, g.tpr, red, phase);
      var = q[0] * p.inv_n;
    }
    const float rstd = 1.f / sqrtf(var + p.eps);
    if (valid && g.lane == 0) {
      if constexpr (!RMS) p.mean[row] = mean;
      p.rstd[row] = rstd;
    }

    // Pass 3: y = (x - mean) * rstd * w + b (w = 1, b = 0 when absent; fma(v, 1, 0) == v). Computed
    // and stored in two halves of the tile: each half's loads are issued before its stores, and
    // at most half the tile's w and b are live at once (registers).
    for (int t = 0; t < ntiles; ++t) {
      const int j0 = t * tile + g.lane;
      if (ntiles > 1) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const int j = j0 + k * g.tpr;
          if (valid && j < nvec) c[k] = ld<T, VEC>(xs + static_cast<int64_t>(j) * VEC);
        }
      }
#pragma unroll
      for (int h = 0; h < K; h += K / 2) {
#pragma unroll
        for (int k = h; k < h + K / 2; ++k) {
          const int j = j0 + k * g.tpr;
          if (valid && j < nvec) {
            const int64_t o = static_cast<int64_t>(j) * VEC;
            const P wv = wp ? ld<T, VEC>(wp + o) : one_pack<T, VEC>();
            const P bv = bp ? ld<T, VEC>(bp + o) : zero_pack<T, VEC>();
            float f[VEC];
#pragma unroll
            for (int i = 0; i < VEC; ++i) f[i] = fmaf((to_f(c[k].v[i]) - mean) * rstd, to_f(wv.v[i]), to_f(bv.v[i]));
            c[k] = pack_of<T, VEC>(f);
          }
        }
#pragma unroll
        for (int k = h; k < h + K / 2; ++k) {
          const int j = j0 + k * g.tpr;
          if (valid && j < nvec) st<T, VEC>(y + static_cast<int64_t>(j) * VEC, c[k]);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Backward: dx per row

struct BwdParams {
  const void* dy;        // [rows, dy_stride]
  const void* dres;      // [rows, dres_stride] or null
  const void* x;         // [rows, x_stride]
  const void* w;         // [cols] or null
  const float* mean;     // [rows] (LayerNorm)
  const float* rstd;     // [rows]
  void* dx;              // [rows, cols]
  int64_t dy_stride, dres_stride, x_stride, rows;
  int cols, tpr;
  float inv_n;
};

template <class T, bool RMS, int VEC>
__global__ void __launch_bounds__(kMaxBwdRowThreads, 2) norm_bwd_dx_kernel(const BwdParams p) {
  constexpr int K = tile_vecs(VEC);
  constexpr int NR = RMS ? 1 : 2;  // sum(g*xhat) [, sum(g)]
  using P = Pack<T, VEC>;
  __shared__ float red[2 * 32 * NR];
  int phase = 0;
  const RowGroup g(p.tpr);
  const int nvec = p.cols / VEC;
  const int tile = g.tpr * K;
  const int ntiles = (nvec + tile - 1) / tile;
  const T* wp = static_cast<const T*>(p.w);
  const bool has_dres = p.dres != nullptr;

  for (int64_t base = static_cast<int64_t>(blockIdx.x) * g.groups_per_block; base < p.rows;
       base += static_cast<int64_t>(gridDim.x) * g.groups_per_block) {
    const int64_t row = base + g.group;
    const bool valid = row < p.rows;
    const int64_t r = valid ? row : 0;
    const T* x = static_cast<const T*>(p.x) + r * p.x_stride;
    const T* dy = static_cast<const T*>(p.dy) + r * p.dy_stride;
    const T* dres = has_dres ? static_cast<const T*>(p.dres) + r * p.dres_stride : nullptr;
    T* dx = static_cast<T*>(p.dx) + r * p.cols;
    const float mean = (!RMS && valid) ? p.mean[r] : 0.f;
    const float rstd = valid ? p.rstd[r] : 0.f;

    P cx[K], cg[K];  // x and dy of the current tile
    auto load_tile = [&](int j0) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = j0 + k * g.tpr;
        const bool in = valid && j < nvec;
        cx[k] = in ? ld<T, VEC>(x + static_cast<int64_t>(j) * VEC) : zero_pack<T, VEC>();
        cg[k] = in ? ld<T, VEC>(dy + static_cast<int64_t>(j) * VEC) : zero_pack<T, VEC>();
      }
    };

    // Pass 1: c1 = sum(g * xhat) / n, c2 = sum(g) / n with g = dy * w, xhat = (x - mean) * rstd.
    float acc[NR];
#pragma unroll
    for (int i = 0; i < NR; ++i) acc[i] = 0.f;
    for (int t = 0; t < ntiles; ++t) {
      const int j0 = t * tile + g.lane;
      load_tile(j0);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = j0 + k * g.tpr;
        if (valid && j < nvec) {
          const P wv = wp ? ld<T, VEC>(wp + static_cast<int64_t>(j) * VEC) : zero_pack<T, VEC>();
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            const float xh = (to_f(cx[k].v[i]) - mean) * rstd;
            const float gi = wp ? to_f(cg[k].v[i]) * to_f(wv.v[i]) : to_f(cg[k].v[i]);
            acc[0] = fmaf(gi, xh, acc[0]);
            if constexpr (!RMS) acc[1] += gi;
          }
        }
      }
    }
    group_sum(acc, g.tpr, red, phase);
    const float c1 = acc[0] * p.inv_n;
    const float c2 = RMS ? 0.f : acc[NR - 1] * p.inv_n;

    // Pass 2: dx = rstd * (g - c2 - xhat * c1) + dresidual_out; the tile computed before it is stored.
    for (int t = 0; t < ntiles; ++t) {
      const int j0 = t * tile + g.lane;
      if (ntiles > 1) load_tile(j0);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = j0 + k * g.tpr;
        if (valid && j < nvec) {
          const int64_t o = static_cast<int64_t>(j) * VEC;
          const P wv = wp ? ld<T, VEC>(wp + o) : zero_pack<T, VEC>();
          const P dv = has_dres ? ld<T, VEC>(dres + o) : zero_pack<T, VEC>();
          float f[VEC];
#pragma unroll
          for (int i = 0; i < VEC; ++i) {
            const float xh = (to_f(cx[k].v[i]) - mean) * rstd;
            const float gi = wp ? to_f(cg[k].v[i]) * to_f(wv.v[i]) : to_f(cg[k].v[i]);
            float d = rstd * (gi - c2 - xh * c1);
            if (has_dres) d += to_f(dv.v[i]);
            f[i] = d;
          }
          cx[k] = pack_of<T, VEC>(f);
        }
      }
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = j0 + k * g.tpr;
        if (valid && j < nvec) st<T, VEC>(dx + static_cast<int64_t>(j) * VEC, cx[k]);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Backward: dweight / dbias

struct ColParams {
  const void* dy;        // [rows, dy_stride]
  const void* x;         // [rows, x_stride]
  const float* mean;     // [rows] or null (RMSNorm)
  const float* rstd;     // [rows]
  float* ws_dw;          // [P, cols] or null
  float* ws_db;          // [P, cols] or null
  int64_t dy_stride, x_stride, rows, cols, chunk;
};

// Block (kColTile, kColRowLanes), grid (ceil(cols / kColTile), P): block y sums
// rows [y*chunk, (y+1)*chunk) of kColTile columns; row lane ty takes every
// kColRowLanes-th row, and the lanes are added in order through smem.
template <class T>
__global__ void __launch_bounds__(kColTile* kColRowLanes) norm_bwd_partials_kernel(const ColParams p) {
  __shared__ float s_dw[kColRowLanes][kColTile + 1];
  __shared__ float s_db[kColRowLanes][kColTile + 1];
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * p.chunk;
  const int64_t r1 = (p.rows - r0 < p.chunk) ? p.rows : r0 + p.chunk;
  const T* dyp = static_cast<const T*>(p.dy);
  const T* xp = static_cast<const T*>(p.x);
  const bool want_dw = p.ws_dw != nullptr;
  float dw = 0.f, db = 0.f;
  if (c < p.cols) {
#pragma unroll 4
    for (int64_t r = r0 + ty; r < r1; r += kColRowLanes) {
      const float gv = to_f(dyp[r * p.dy_stride + c]);
      if (want_dw) {
        const float m = p.mean ? p.mean[r] : 0.f;
        const float xh = (to_f(xp[r * p.x_stride + c]) - m) * p.rstd[r];
        dw = fmaf(gv, xh, dw);
      }
      db += gv;
    }
  }
  s_dw[ty][tx] = dw;
  s_db[ty][tx] = db;
  __syncthreads();
  if (ty == 0 && c < p.cols) {
    float sw = 0.f, sb = 0.f;
#pragma unroll
    for (int k = 0; k < kColRowLanes; ++k) {
      sw += s_dw[k][tx];
      sb += s_db[k][tx];
    }
    const int64_t o = static_cast<int64_t>(blockIdx.y) * p.cols + c;
    if (p.ws_dw) p.ws_dw[o] = sw;
    if (p.ws_db) p.ws_db[o] = sb;
  }
}

// Block (kColTile, kFinalLanes), grid (ceil(cols / kColTile), ngrads): grad
// blockIdx.y reads partials ws + y*P*cols, [P, cols], and writes out_y[cols] in T.
template <class T>
__global__ void __launch_bounds__(kColTile* kFinalLanes)
    norm_bwd_final_kernel(const float* ws, void* out0, void* out1, int64_t P, int64_t cols) {
  __shared__ float s[kFinalLanes][kColTile + 1];
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + tx;
  const float* src = ws + static_cast<int64_t>(blockIdx.y) * P * cols;
  float acc = 0.f;
  if (c < cols) {
#pragma unroll 4
    for (int64_t q = ty; q < P; q += kFinalLanes) acc += src[q * cols + c];
  }
  s[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && c < cols) {
    float t = 0.f;
#pragma unroll
    for (int k = 0; k < kFinalLanes; ++k) t += s[k][tx];
    T* out = static_cast<T*>(blockIdx.y == 0 ? out0 : out1);
    out[c] = from_f<T>(t);
  }
}

// ---------------------------------------------------------------------------
// Host side

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int elem_size(int dtype) { return dtype == kFloat32 ? 4 : 2; }

bool aligned(const void* p, uintptr_t n) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % n == 0; }

void check_common(int64_t rows, int64_t cols, int dtype, const char* op) {
  TF_CHECK_ARG(rows >= 0, op, ": rows must be >= 0, got ", rows);
  TF_CHECK_ARG(cols >= 1, op, ": the normalised (last) dimension must be >= 1, got ", cols);
  TF_CHECK_ARG(cols <= kMaxCols, op, ": the normalised (last) dimension must be <= ", kMaxCols, ", got ", cols);
  TF_CHECK_ARG(dtype == kFloat32 || dtype == kBFloat16 || dtype == kFloat16, op,
               ": CUDA kernels take float32, bfloat16 or float16, got dtype code ", dtype, " (", dtype_name(dtype),
               ")");
}

void check_rows(const void* p, int64_t stride, int64_t cols, int es, const char* op, const char* name) {
  TF_CHECK_ARG(p != nullptr, op, ": ", name, " is a null pointer");
  TF_CHECK_ARG(stride >= cols, op, ": ", name, " row stride ", stride, " is smaller than the row length ", cols);
  TF_CHECK_ARG(aligned(p, es), op, ": ", name, " is not aligned to its element size (", es, " bytes)");
}

void check_vector(const void* p, int es, const char* op, const char* name) {
  TF_CHECK_ARG(aligned(p, es), op, ": ", name, " is not aligned to its element size (", es, " bytes)");
}

void check_floats(const float* p, const char* op, const char* name) {
  TF_CHECK_ARG(p != nullptr, op, ": ", name, " is a null pointer");
  TF_CHECK_ARG(aligned(p, 4), op, ": ", name, " is not 4-byte aligned");
}

// How a row kernel is launched: tpr threads per row, block size, grid size.
struct RowPlan {
  int tpr, threads;
  int64_t grid;
};

// The fewest threads per row (a power of two up to 32, then a multiple of 32
// up to max_threads) that hold the row in one tile of K vectors each.
RowPlan plan_rows(int64_t rows, int64_t cols, int vec, int max_threads, int sms) {
  const int64_t need = ceil_div(cols / vec, tile_vecs(vec));
  RowPlan pl{};
  int64_t blocks;
  if (need <= 32) {
    int t = 1;
    while (t < need) t <<= 1;
    pl.tpr = t;
    pl.threads = kWarpModeThreads;
    blocks = ceil_div(rows, kWarpModeThreads / t);
  } else {
    pl.tpr = pl.threads = static_cast<int>(std::min<int64_t>(max_threads, ceil_div(need, 32) * 32));
    blocks = rows;
  }
  // Grid-stride over rows beyond a few waves (and far below gridDim.x's limit).
  pl.grid = std::max<int64_t>(1, std::min<int64_t>(blocks, static_cast<int64_t>(sms) * 64));
  return pl;
}

// Number of fp32 partials per gradient: about two waves of partials blocks,
// at least kMinChunk rows each, at most kMaxPartials of them.
int64_t pick_partials(int64_t rows, int64_t cols, int sms) {
  if (rows <= 0) return 0;
  const int64_t col_blocks = ceil_div(cols, kColTile);
  const int64_t target_blocks = static_cast<int64_t>(sms) * (2048 / (kColTile * kColRowLanes)) * 2;
  const int64_t p = std::max<int64_t>(1, ceil_div(target_blocks, col_blocks));
  int64_t chunk = std::max<int64_t>(kMinChunk, ceil_div(rows, p));
  chunk = std::max<int64_t>(chunk, ceil_div(rows, kMaxPartials));
  return ceil_div(rows, chunk);
}

int64_t partial_chunk(int64_t rows, int64_t P) { return ceil_div(rows, P); }

template <class T>
constexpr int vec_of() {
  return 16 / static_cast<int>(sizeof(T));
}

template <class T>
void launch_fwd(FwdParams p, bool rms, bool vec, int sms, cudaStream_t stream, const char* op) {
  constexpr int V = vec_of<T>();
  const RowPlan pl = plan_rows(p.rows, p.cols, vec ? V : 1, kMaxFwdRowThreads, sms);
  p.tpr = pl.tpr;
  const dim3 grid(static_cast<unsigned>(pl.grid)), block(static_cast<unsigned>(pl.threads));
  if (rms) {
    if (vec) TF_LAUNCH(grid, block, 0, stream, norm_fwd_kernel<T, true, V>)(p);
    else TF_LAUNCH(grid, block, 0, stream, norm_fwd_kernel<T, true, 1>)(p);
  } else {
    if (vec) TF_LAUNCH(grid, block, 0, stream, norm_fwd_kernel<T, false, V>)(p);
    else TF_LAUNCH(grid, block, 0, stream, norm_fwd_kernel<T, false, 1>)(p);
  }
  check_launch(op, "norm_fwd_kernel");
}

template <class T>
void launch_bwd_dx(BwdParams p, bool rms, bool vec, int sms, cudaStream_t stream, const char* op) {
  constexpr int V = vec_of<T>();
  const RowPlan pl = plan_rows(p.rows, p.cols, vec ? V : 1, kMaxBwdRowThreads, sms);
  p.tpr = pl.tpr;
  const dim3 grid(static_cast<unsigned>(pl.grid)), block(static_cast<unsigned>(pl.threads));
  if (rms) {
    if (vec) TF_LAUNCH(grid, block, 0, stream, norm_bwd_dx_kernel<T, true, V>)(p);
    else TF_LAUNCH(grid, block, 0, stream, norm_bwd_dx_kernel<T, true, 1>)(p);
  } else {
    if (vec) TF_LAUNCH(grid, block, 0, stream, norm_bwd_dx_kernel<T, false, V>)(p);
    else TF_LAUNCH(grid, block, 0, stream, norm_bwd_dx_kernel<T, false, 1>)(p);
  }
  check_launch(op, "norm_bwd_dx_kernel");
}

template <class T>
void launch_bwd_params(const ColParams& cp, int64_t P, int ngrads, void* out0, void* out1, float* ws,
                       cudaStream_t stream, const char* op) {
  const dim3 pgrid(static_cast<unsigned>(ceil_div(cp.cols, kColTile)), static_cast<unsigned>(P));
  TF_LAUNCH(pgrid, dim3(kColTile, kColRowLanes), 0, stream, norm_bwd_partials_kernel<T>)(cp);
  check_launch(op, "norm_bwd_partials_kernel");
  const dim3 fgrid(static_cast<unsigned>(ceil_div(cp.cols, kColTile)), static_cast<unsigned>(ngrads));
  TF_LAUNCH(fgrid, dim3(kColTile, kFinalLanes), 0, stream, norm_bwd_final_kernel<T>)(ws, out0, out1, P, cp.cols);
  check_launch(op, "norm_bwd_final_kernel");
}

}  // namespace

int device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n > 0 ? n : 0;
}

std::string runtime_info() {
  int rt = 0, drv = 0;
  if (cudaRuntimeGetVersion(&rt) != cudaSuccess) (void)cudaGetLastError();
  if (cudaDriverGetVersion(&drv) != cudaSuccess) (void)cudaGetLastError();
  std::string s = concat("cudart ", rt, ", driver ", drv);
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return concat(s, ", no usable CUDA device: ", cudaGetErrorString(e));
  }
  s = concat(s, ", ", n, " device(s)");
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop{};
    const cudaError_t pe = cudaGetDeviceProperties(&prop, i);
    if (pe != cudaSuccess) {
      (void)cudaGetLastError();
      s = concat(s, i == 0 ? ": " : "; ", "device ", i, " (", cudaGetErrorString(pe), ")");
      continue;
    }
    s = concat(s, i == 0 ? ": " : "; ", prop.name, " (sm_", prop.major, prop.minor, ")");
  }
  return s;
}

void norm_fwd(const NormFwdArgs& a, int device, uintptr_t stream) {
  const char* op = a.rms ? "rms_norm_fwd_cuda" : "layer_norm_fwd_cuda";
  check_common(a.rows, a.cols, a.dtype, op);
  TF_CHECK_ARG(std::isfinite(a.eps) && a.eps > 0.f, op, ": eps must be a positive finite number, got ", a.eps);
  TF_CHECK_ARG(!(a.rms && a.bias), op, ": RMSNorm takes no bias");
  const int es = elem_size(a.dtype);
  if (a.rows > 0) {
    check_rows(a.x, a.x_stride, a.cols, es, op, "x");
    check_rows(a.y, a.cols, a.cols, es, op, "y");
    check_floats(a.rstd, op, "rstd");
    if (!a.rms) check_floats(a.mean, op, "mean");
    if (a.residual) {
      check_rows(a.residual, a.residual_stride, a.cols, es, op, "residual");
      TF_CHECK_ARG(a.residual_out != nullptr, op, ": residual given but residual_out is a null pointer");
      check_rows(a.residual_out, a.cols, a.cols, es, op, "residual_out");
    }
    check_vector(a.weight, es, op, "weight");
    check_vector(a.bias, es, op, "bias");
  }

  DeviceGuard guard(device, op);
  if (a.rows == 0) return;
  const int sms = sm_count(device, op);

  FwdParams p{};
  p.x = a.x;
  p.res = a.residual;
  p.w = a.weight;
  p.b = a.bias;
  p.y = a.y;
  p.res_out = a.residual ? a.residual_out : nullptr;
  p.mean = a.rms ? nullptr : a.mean;
  p.rstd = a.rstd;
  p.x_stride = a.x_stride;
  p.res_stride = a.residual ? a.residual_stride : 0;
  p.rows = a.rows;
  p.cols = static_cast<int>(a.cols);
  p.eps = a.eps;
  p.inv_n = 1.f / static_cast<float>(a.cols);

  // 16-byte accesses when every row start of every tensor is 16-byte aligned.
  const int V = 16 / es;
  const bool vec = a.cols % V == 0 && a.x_stride % V == 0 && (!a.residual || a.residual_stride % V == 0) &&
                   aligned(a.x, 16) && aligned(a.y, 16) && aligned(p.res, 16) && aligned(p.res_out, 16) &&
                   aligned(a.weight, 16) && aligned(a.bias, 16);

  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  (void)cudaGetLastError();  // do not report someone else's stale error as ours
  switch (a.dtype) {
    case kFloat32: launch_fwd<float>(p, a.rms, vec, sms, s, op); break;
    case kBFloat16: launch_fwd<__nv_bfloat16>(p, a.rms, vec, sms, s, op); break;
    default: launch_fwd<__half>(p, a.rms, vec, sms, s, op); break;
  }
}

namespace {

const char* bwd_op(const NormBwdArgs& a) { return a.rms ? "rms_norm_bwd_cuda" : "layer_norm_bwd_cuda"; }

int bwd_ngrads(const NormBwdArgs& a) { return (a.dweight ? 1 : 0) + (a.dbias ? 1 : 0); }

void check_bwd(const NormBwdArgs& a, const char* op) {
  check_common(a.rows, a.cols, a.dtype, op);
  TF_CHECK_ARG(!(a.rms && a.dbias), op, ": RMSNorm has no bias gradient");
  TF_CHECK_ARG(!a.dweight || a.weight, op, ": dweight requested without weight");
  const int es = elem_size(a.dtype);
  if (a.rows > 0) {
    check_rows(a.dy, a.dy_stride, a.cols, es, op, "dy");
    check_rows(a.x, a.x_stride, a.cols, es, op, "x");
    check_rows(a.dx, a.cols, a.cols, es, op, "dx");
    if (a.dresidual_out) check_rows(a.dresidual_out, a.dres_stride, a.cols, es, op, "dresidual_out");
    check_floats(a.rstd, op, "rstd");
    if (!a.rms) check_floats(a.mean, op, "mean");
  }
  check_vector(a.weight, es, op, "weight");
  check_vector(a.dweight, es, op, "dweight");
  check_vector(a.dbias, es, op, "dbias");
}

}  // namespace

int64_t norm_bwd_workspace_floats(const NormBwdArgs& a, int device) {
  const char* op = bwd_op(a);
  check_common(a.rows, a.cols, a.dtype, op);
  const int ngrads = bwd_ngrads(a);
  if (a.rows == 0 || ngrads == 0) return 0;
  require_device_index(device, op);
  return ngrads * pick_partials(a.rows, a.cols, sm_count(device, op)) * a.cols;
}

void norm_bwd(const NormBwdArgs& a, float* workspace, int64_t workspace_floats, int device, uintptr_t stream) {
  const char* op = bwd_op(a);
  check_bwd(a, op);
  TF_CHECK_ARG(aligned(workspace, 4), op, ": workspace is not 4-byte aligned");

  DeviceGuard guard(device, op);
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const int es = elem_size(a.dtype);
  const int ngrads = bwd_ngrads(a);
  (void)cudaGetLastError();  // do not report someone else's stale error as ours

  if (a.rows == 0) {  // empty sums: zero gradients
    if (a.dweight)
      check_cuda(cudaMemsetAsync(a.dweight, 0, static_cast<size_t>(a.cols) * es, s), op, "cudaMemsetAsync(dweight)");
    if (a.dbias)
      check_cuda(cudaMemsetAsync(a.dbias, 0, static_cast<size_t>(a.cols) * es, s), op, "cudaMemsetAsync(dbias)");
    return;
  }

  const int sms = sm_count(device, op);
  const int64_t P = ngrads ? pick_partials(a.rows, a.cols, sms) : 0;
  const int64_t need = ngrads * P * a.cols;
  TF_CHECK_ARG(workspace_floats >= need, op, ": workspace has ", workspace_floats, " floats, needs ", need,
               " (norm_bwd_workspace_floats)");
  TF_CHECK_ARG(need == 0 || workspace != nullptr, op, ": workspace is a null pointer");

  // dweight / dbias first: they read dy and x, so a dx that overwrites either stays correct.
  if (ngrads) {
    ColParams cp{};
    cp.dy = a.dy;
    cp.x = a.x;
    cp.mean = a.rms ? nullptr : a.mean;
    cp.rstd = a.rstd;
    cp.ws_dw = a.dweight ? workspace : nullptr;
    cp.ws_db = a.dbias ? workspace + (a.dweight ? P * a.cols : 0) : nullptr;
    cp.dy_stride = a.dy_stride;
    cp.x_stride = a.x_stride;
    cp.rows = a.rows;
    cp.cols = a.cols;
    cp.chunk = partial_chunk(a.rows, P);
    void* out0 = a.dweight ? a.dweight : a.dbias;
    void* out1 = a.dweight ? a.dbias : nullptr;
    switch (a.dtype) {
      case kFloat32: launch_bwd_params<float>(cp, P, ngrads, out0, out1, workspace, s, op); break;
      case kBFloat16: launch_bwd_params<__nv_bfloat16>(cp, P, ngrads, out0, out1, workspace, s, op); break;
      default: launch_bwd_params<__half>(cp, P, ngrads, out0, out1, workspace, s, op); break;
    }
  }

  BwdParams p{};
  p.dy = a.dy;
  p.dres = a.dresidual_out;
  p.x = a.x;
  p.w = a.weight;
  p.mean = a.rms ? nullptr : a.mean;
  p.rstd = a.rstd;
  p.dx = a.dx;
  p.dy_stride = a.dy_stride;
  p.dres_stride = a.dresidual_out ? a.dres_stride : 0;
  p.x_stride = a.x_stride;
  p.rows = a.rows;
  p.cols = static_cast<int>(a.cols);
  p.inv_n = 1.f / static_cast<float>(a.cols);

  const int V = 16 / es;
  const bool vec = a.cols % V == 0 && a.dy_stride % V == 0 && a.x_stride % V == 0 &&
                   (!a.dresidual_out || a.dres_stride % V == 0) && aligned(a.dy, 16) && aligned(a.x, 16) &&
                   aligned(a.dx, 16) && aligned(a.dresidual_out, 16) && aligned(a.weight, 16);
  switch (a.dtype) {
    case kFloat32: launch_bwd_dx<float>(p, a.rms, vec, sms, s, op); break;
    case kBFloat16: launch_bwd_dx<__nv_bfloat16>(p, a.rms, vec, sms, s, op); break;
    default: launch_bwd_dx<__half>(p, a.rms, vec, sms, s, op); break;
  }
}

}  // namespace tforge::cuda
