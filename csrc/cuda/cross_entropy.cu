// Cross-entropy forward (loss, row stats, fused gradient) and the reduction="none" backward on CUDA
// (sm_80, sm_90a). Same math as csrc/cpu/cross_entropy_kernels.h: fp32, a row's logsumexp kept as
// (max m, ls = log sum exp(x - m)), gradient (exp((x - m) - ls) - onehot) * scale in the logits' dtype.
//
// A group of `tpr` threads owns a row: one warp (blocks of 128 threads, four rows) when the row has
// at most 1024 elements, else the whole block (128 to 512 threads, one row; more rows by a
// grid-stride loop). Each thread walks its elements with 16-byte loads when every row start is
// 16-byte aligned (else one element at a time), keeping its own running max and exp-sum (online
// softmax: one read of the row); the group then merges the (m, s) pairs with xor shuffles and, for a
// block, through shared memory, so every thread ends with the same bits. The gradient pass reads the
// row again (from L2: a block's row is at most a few hundred KiB) and writes it with 16-byte stores.
// Ignored rows read nothing and write zeros.
#include "cuda/cross_entropy.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/checks.h"
#include "common/cuda_utils.h"
#include "common/dtype.h"
#include "cuda/elementwise.cuh"
#include "cuda/ptx.cuh"

namespace tforge::cuda {
namespace {

constexpr int kWarpRowCols = 1024;        // rows up to this long: one warp each
constexpr int kWarpModeThreads = 128;     // block size in warp mode (four rows)
constexpr int kMaxRowThreads = 512;       // widest block (one row)
constexpr int64_t kMaxCols = int64_t(1) << 30;  // in-row indices stay int
constexpr unsigned kMaxGrid = 1u << 20;   // programs, at most (grid-stride beyond)
constexpr float kLog2e = 1.4426950408889634f;

// e^x through ex2.approx (2 ulp on the scaled argument); -inf -> 0, NaN stays NaN.
__device__ __forceinline__ float fexp(float x) { return ptx::ex2_approx_ftz(x * kLog2e); }

// A running max and sum of exp(x - max), merged pairwise.
struct Online {
  float m = -INFINITY, s = 0.f;

  __device__ __forceinline__ void merge(float m2, float s2) {
    const float mn = fmaxf(m, m2);
    const float sh = mn == -INFINITY ? 0.f : mn;  // only -inf seen so far: exp(-inf - 0) = 0, no NaN
    s = s * fexp(m - sh) + s2 * fexp(m2 - sh);
    m = mn;
  }
};

struct Params {
  const void* x;       // [rows, stride]
  const void* target;  // [rows] int64 or int32
  float* loss;         // [rows] (forward)
  float* row_max;      // [rows] out (forward, optional) or in (backward)
  float* row_logsum;   // the same
  void* grad;          // [rows, cols] (forward: optional)
  const float* row_scale;  // [rows] (backward)
  float grad_scale;
  int64_t stride, rows, ignore_index;
  int cols, tpr;
  bool target_int32;
};

// The group's (m, s), identical in every thread of it. Block mode: every thread of the block calls.
__device__ __forceinline__ Online group_merge(Online o, int tpr, float* sm, float* ss) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, o.m, off), s2 = __shfl_xor_sync(0xffffffffu, o.s, off);
    o.merge(m2, s2);
  }
  if (tpr <= 32) return o;
  const int warp = static_cast<int>(threadIdx.x >> 5), nw = static_cast<int>(blockDim.x >> 5);
  if ((threadIdx.x & 31) == 0) {
    sm[warp] = o.m;
    ss[warp] = o.s;
  }
  __syncthreads();
  Online r{sm[0], ss[0]};
  for (int w = 1; w < nw; ++w) r.merge(sm[w], ss[w]);
  __syncthreads();  // the buffers are rewritten for the next row
  return r;
}

template <class T, int VEC>
__device__ __forceinline__ void grad_row(const T* x, T* g, int cols, int lane, int tpr, float m, float ls,
                                         int64_t target, float scale) {
  const int nvec = cols / VEC;
  for (int j = lane; j < nvec; j += tpr) {
    const Pack<T, VEC> in = *reinterpret_cast<const Pack<T, VEC>*>(x + static_cast<int64_t>(j) * VEC);
    Pack<T, VEC> out;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const int c = j * VEC + i;
      const float p = fexp((to_f(in.v[i]) - m) - ls);
      out.v[i] = from_f<T>((c == target ? p - 1.f : p) * scale);
    }
    *reinterpret_cast<Pack<T, VEC>*>(g + static_cast<int64_t>(j) * VEC) = out;
  }
}

template <class T, int VEC>
__device__ __forceinline__ void zero_row(T* g, int cols, int lane, int tpr) {
  Pack<T, VEC> z;
#pragma unroll
  for (int i = 0; i < VEC; ++i) z.v[i] = from_f<T>(0.f);
  for (int j = lane; j < cols / VEC; j += tpr) *reinterpret_cast<Pack<T, VEC>*>(g + static_cast<int64_t>(j) * VEC) = z;
}

__device__ __forceinline__ int64_t target_of(const Params& p, int64_t r) {
  return p.target_int32 ? static_cast<const int32_t*>(p.target)[r] : static_cast<const int64_t*>(p.target)[r];
}

// Where a thread sits: its lane in the row group, the group in the block, groups per block.
struct Group {
  int lane, group, per_block;
  __device__ __forceinline__ explicit Group(int tpr) {
    lane = static_cast<int>(threadIdx.x) % tpr;
    group = static_cast<int>(threadIdx.x) / tpr;
    per_block = static_cast<int>(blockDim.x) / tpr;
  }
};

template <class T, int VEC, bool BACKWARD>
__global__ void __launch_bounds__(kMaxRowThreads) cross_entropy_kernel(const Params p) {
  __shared__ float red_m[32], red_s[32];
  const Group g(p.tpr);
  const int nvec = p.cols / VEC;
  // Block mode keeps every thread of the block in the loop (the merge has barriers): rows advance together.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * g.per_block; base < p.rows;
       base += static_cast<int64_t>(gridDim.x) * g.per_block) {
    const int64_t row = base + g.group;
    if (row >= p.rows) break;  // warp mode only: a whole warp, which has no partner in the block
    const T* x = static_cast<const T*>(p.x) + row * p.stride;
    T* gr = p.grad ? static_cast<T*>(p.grad) + row * p.cols : nullptr;
    const int64_t t = target_of(p, row);
    if (t == p.ignore_index) {  // uniform over the group
      if (g.lane == 0 && !BACKWARD) {
        p.loss[row] = 0.f;
        if (p.row_max) p.row_max[row] = p.row_logsum[row] = 0.f;
      }
      if (gr) zero_row<T, VEC>(gr, p.cols, g.lane, p.tpr);
      continue;
    }
    float m, ls;
    if constexpr (BACKWARD) {
      m = p.row_max[row];
      ls = p.row_logsum[row];
    } else {
      Online o;
      for (int j = g.lane; j < nvec; j += p.tpr) {
        const Pack<T, VEC> in = *reinterpret_cast<const Pack<T, VEC>*>(x + static_cast<int64_t>(j) * VEC);
        float v[VEC], vm = -INFINITY;
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          v[i] = to_f(in.v[i]);
          vm = fmaxf(vm, v[i]);
        }
        float vs = 0.f;
        const float sh = vm == -INFINITY ? 0.f : vm;
#pragma unroll
        for (int i = 0; i < VEC; ++i) vs += fexp(v[i] - sh);
        o.merge(vm, vs);
      }
      o = group_merge(o, p.tpr, red_m, red_s);
      m = o.m;
      ls = logf(o.s);
      if (g.lane == 0) {
        const bool in_range = t >= 0 && t < p.cols;  // else NaN: the host cannot check device targets
        const float xt = in_range ? to_f(x[t]) : NAN;
        p.loss[row] = (m - xt) + ls;
        if (p.row_max) {
          p.row_max[row] = m;
          p.row_logsum[row] = ls;
        }
      }
    }
    if (gr) grad_row<T, VEC>(x, gr, p.cols, g.lane, p.tpr, m, ls, t, BACKWARD ? p.row_scale[row] : p.grad_scale);
  }
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

template <class T>
void launch(Params p, bool backward, const CrossEntropyArgs& a, cudaStream_t stream, const char* op) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = a.cols % V == 0 && a.logits_stride % V == 0 && aligned16(a.logits) && aligned16(a.grad);
  int tpr, threads;
  if (a.cols <= kWarpRowCols) {
    tpr = 32;
    threads = kWarpModeThreads;
  } else {  // 16 to 64 elements a thread
    tpr = a.cols <= 4096 ? 128 : a.cols <= 16384 ? 256 : kMaxRowThreads;
    threads = tpr;
  }
  p.tpr = tpr;
  const int64_t per_block = threads / tpr;
  const int64_t want = (a.rows + per_block - 1) / per_block;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(want, kMaxGrid))), block(threads);
  if (backward) {
    if (vec) TF_LAUNCH(grid, block, 0, stream, cross_entropy_kernel<T, V, true>)(p);
    else TF_LAUNCH(grid, block, 0, stream, cross_entropy_kernel<T, 1, true>)(p);
  } else {
    if (vec) TF_LAUNCH(grid, block, 0, stream, cross_entropy_kernel<T, V, false>)(p);
    else TF_LAUNCH(grid, block, 0, stream, cross_entropy_kernel<T, 1, false>)(p);
  }
  check_launch(op, "cross_entropy_kernel");
}

constexpr unsigned kCudaDtypes = (1u << kFloat32) | (1u << kBFloat16) | (1u << kFloat16);

void run(const CrossEntropyArgs& a, bool backward, int device, uintptr_t stream, const char* op) {
  a.check(op, backward, kCudaDtypes);
  TF_CHECK_ARG(a.cols <= kMaxCols, op, ": rows longer than ", kMaxCols, " classes are not supported, got ", a.cols);
  DeviceGuard guard(device, op);
  if (a.rows == 0) return;
  Params p{};
  p.x = a.logits;
  p.target = a.target;
  p.loss = a.loss;
  p.row_max = a.row_max;
  p.row_logsum = a.row_logsum;
  p.grad = a.grad;
  p.row_scale = a.row_scale;
  p.grad_scale = a.grad_scale;
  p.stride = a.logits_stride;
  p.rows = a.rows;
  p.ignore_index = a.ignore_index;
  p.cols = static_cast<int>(a.cols);
  p.target_int32 = a.target_int32;
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  (void)cudaGetLastError();  // do not report someone else's stale error as ours
  switch (a.dtype) {
    case kFloat32: launch<float>(p, backward, a, s, op); break;
    case kBFloat16: launch<__nv_bfloat16>(p, backward, a, s, op); break;
    default: launch<__half>(p, backward, a, s, op); break;
  }
}

}  // namespace

void cross_entropy_fwd(const CrossEntropyArgs& a, int device, uintptr_t stream) {
  run(a, false, device, stream, "cross_entropy_fwd_cuda");
}

void cross_entropy_bwd(const CrossEntropyArgs& a, int device, uintptr_t stream) {
  run(a, true, device, stream, "cross_entropy_bwd_cuda");
}

}  // namespace tforge::cuda
