// Host meanings of the CUDA C++ that csrc/cuda/*.cu use, so that the very
// same files compile as host C++ for the warp-level emulator (TFORGE_EMULATOR).
// The shim headers in emu/include (cuda_runtime.h, cuda_bf16.h, cuda_fp16.h)
// include this file; nothing else should.
//
// - qualifiers: __global__ / __device__ / __host__ vanish, __shared__ becomes
//   `static` (one CTA runs at a time, so one static copy is the CTA's shared
//   memory; the runtime tracks it for race detection);
// - threadIdx / blockIdx / blockDim / gridDim read the running fiber's ids;
// - barriers, shuffles and votes are warp / CTA rendezvous in emu/runtime.cpp;
// - __half / __nv_bfloat16 round to nearest even exactly as the GPU does;
// - the CUDA runtime API calls the kernels' host code makes are emulated
//   (one device, no GPU; memory is ordinary host memory).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define __restrict__ __restrict

// ---------------------------------------------------------------------------
// Vector types

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// ---------------------------------------------------------------------------
// The emulator's runtime (emu/runtime.cpp): not instrumented, called out of line.

namespace tforge::emu {
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();
int lane_id();  // linear thread index % 32
// `file` / `line`: the __syncthreads in the source (compilers may duplicate one call site).
void syncthreads(const char* file, int line);
void syncwarp(unsigned mask);
// Every lane of the warp posts `mine` and receives all 32 posted values (lane order).
void warp_exchange(uint64_t mine, unsigned mask, const char* what, uint64_t (&all)[32]);
[[noreturn]] void trap(const char* why);
}  // namespace tforge::emu

#define threadIdx (::tforge::emu::thread_idx())
#define blockIdx (::tforge::emu::block_idx())
#define blockDim (::tforge::emu::block_dim())
#define gridDim (::tforge::emu::grid_dim())
#define warpSize 32

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::tforge::emu::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::tforge::emu::syncwarp(mask); }
inline void __threadfence() {}  // CTAs run one after another: every write is already visible
inline void __threadfence_block() {}
[[noreturn]] inline void __trap() { ::tforge::emu::trap("__trap() called"); }

// ---------------------------------------------------------------------------
// Bit casts and exact scalar intrinsics

template <class To, class From>
inline To tf_emu_bits(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit cast between different sizes");
  To t;
  std::memcpy(&t, &v, sizeof(To));
  return t;
}
inline float __uint_as_float(unsigned v) { return tf_emu_bits<float>(v); }
inline unsigned __float_as_uint(float v) { return tf_emu_bits<unsigned>(v); }
inline float __int_as_float(int v) { return tf_emu_bits<float>(v); }
inline int __float_as_int(float v) { return tf_emu_bits<int>(v); }

// IEEE single operations, never contracted into an FMA (the build uses -ffp-contract=off).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __int2float_rn(int v) { return static_cast<float>(v); }
// cvt.rni.s32.f32: nearest even, saturating, NaN -> 0.
inline int __float2int_rn(float f) {
  if (std::isnan(f)) return 0;
  if (f >= 2147483648.f) return INT32_MAX;
  if (f <= -2147483648.f) return INT32_MIN;
  return static_cast<int>(std::nearbyint(f));
}
// The integer / floating min and max overloads CUDA's device library provides.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

inline float __saturatef(float f) { return std::isnan(f) ? 0.f : (f < 0.f ? 0.f : (f > 1.f ? 1.f : f)); }

// dp4a.s32.s32: four signed byte products added to c.
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i)
    c += static_cast<int>(static_cast<int8_t>(a >> (8 * i))) * static_cast<int>(static_cast<int8_t>(b >> (8 * i)));
  return c;
}
// prmt.b32 (default mode): byte i of the result is byte (s >> 4i) & 7 of {b, a}; bit 3 of the
// selector nibble replicates that byte's sign bit.
inline unsigned __byte_perm(unsigned a, unsigned b, unsigned s) {
  const uint64_t src = (static_cast<uint64_t>(b) << 32) | a;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) {
    const unsigned sel = (s >> (4 * i)) & 0xfu;
    unsigned byte = static_cast<unsigned>(src >> (8 * (sel & 7u))) & 0xffu;
    if (sel & 8u) byte = (byte & 0x80u) ? 0xffu : 0u;
    r |= byte << (8 * i);
  }
  return r;
}

// ---------------------------------------------------------------------------
// Loads through the read-only / L2 paths: ordinary loads here.

template <class T>
inline T __ldg(const T* p) {
  return *p;
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}

// ---------------------------------------------------------------------------
// Atomics: one fiber runs at a time and none is preempted, so plain read-modify-write is atomic.

template <class T, class F>
inline T tf_emu_rmw(T* p, F f) {
  const T old = *p;
  *p = f(old);
  return old;
}
template <class T>
inline T atomicAdd(T* p, T v) { return tf_emu_rmw(p, [v](T o) { return o + v; }); }
template <class T>
inline T atomicSub(T* p, T v) { return tf_emu_rmw(p, [v](T o) { return o - v; }); }
template <class T>
inline T atomicMax(T* p, T v) { return tf_emu_rmw(p, [v](T o) { return o < v ? v : o; }); }
template <class T>
inline T atomicMin(T* p, T v) { return tf_emu_rmw(p, [v](T o) { return v < o ? v : o; }); }
template <class T>
inline T atomicExch(T* p, T v) { return tf_emu_rmw(p, [v](T) { return v; }); }
template <class T>
inline T atomicCAS(T* p, T cmp, T v) { return tf_emu_rmw(p, [cmp, v](T o) { return o == cmp ? v : o; }); }

// ---------------------------------------------------------------------------
// Warp shuffles and votes (shfl.sync / vote.sync): a rendezvous of the warp's 32 lanes. All lanes
// named in `mask` must arrive; tforge's kernels use full masks, and a lane missing from a
// collective is reported by the runtime rather than guessed at.

template <class T>
inline uint64_t tf_emu_to_u64(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type wider than 64 bits");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T>
inline T tf_emu_from_u64(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}
inline int tf_emu_lane() { return ::tforge::emu::lane_id(); }

// shfl.sync.idx with a width: lane l reads lane (l & ~(width - 1)) | (src & (width - 1)).
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  uint64_t all[32];
  ::tforge::emu::warp_exchange(tf_emu_to_u64(v), mask, "__shfl_sync", all);
  const int l = tf_emu_lane();
  return tf_emu_from_u64<T>(all[(l & ~(width - 1)) | (src & (width - 1))]);
}
// shfl.sync.bfly: lane l reads lane l ^ m when that stays inside its width-segment, else keeps v.
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32) {
  uint64_t all[32];
  ::tforge::emu::warp_exchange(tf_emu_to_u64(v), mask, "__shfl_xor_sync", all);
  const int l = tf_emu_lane(), s = l ^ m;
  return (s & ~(width - 1)) == (l & ~(width - 1)) ? tf_emu_from_u64<T>(all[s]) : v;
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
  uint64_t all[32];
  ::tforge::emu::warp_exchange(tf_emu_to_u64(v), mask, "__shfl_down_sync", all);
  const int l = tf_emu_lane(), s = l + static_cast<int>(d);
  return (s & ~(width - 1)) == (l & ~(width - 1)) ? tf_emu_from_u64<T>(all[s]) : v;
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
  uint64_t all[32];
  ::tforge::emu::warp_exchange(tf_emu_to_u64(v), mask, "__shfl_up_sync", all);
  const int l = tf_emu_lane(), s = l - static_cast<int>(d);
  return s >= (l & ~(width - 1)) ? tf_emu_from_u64<T>(all[s]) : v;
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  uint64_t all[32];
  ::tforge::emu::warp_exchange(pred != 0, mask, "__ballot_sync", all);
  unsigned r = 0;
  for (int i = 0; i < 32; ++i)
    if (((mask >> i) & 1u) && all[i]) r |= 1u << i;
  return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }

#include "emu/half_types.h"
#include "emu/runtime_api.h"
