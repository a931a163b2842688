// The emulator's definitions of cuda/ptx.cuh's functions (same names, same
// signatures), with the semantics the PTX ISA gives each instruction:
// - shared loads / stores translate the 32-bit shared-window address and
//   access memory here, in the instrumented kernel code, so the runtime's
//   race and bounds checks see them;
// - cp.async queues the copy; it lands in shared memory only when the
//   cp.async.wait_group that retires its group runs (a missing wait reads
//   stale data, and touching the destination before then is reported);
// - ldmatrix and mma are warp rendezvous computed by the runtime from the
//   fragment layouts in emu/fragments.h.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "emu/cuda_prelude.h"  // dim3, __half, ... (and launch.h)

namespace tforge::emu {
unsigned char* dynamic_smem();
// Host address of `bytes` bytes at shared-window address `addr` (bounds and alignment checked).
void* shared_ptr(uint32_t addr, int bytes, const char* what);
void cp_async(uint32_t dst, const void* src, int cp_size, int src_size, const char* what);
void cp_async_commit();
void cp_async_wait(int n);
void ldmatrix(uint32_t (&r)[4], uint32_t addr, int num, bool trans);
void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16);
void mma_m16n8k32_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void mma_sp_m16n8k32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t e, bool bf16);
}  // namespace tforge::emu

namespace tforge::ptx {

inline unsigned char* dynamic_smem() { return emu::dynamic_smem(); }
inline uint32_t smem_u32(const void* p) { return emu::cvta_shared(p); }

// Plain loads and stores through the translated pointer: the instrumentation sees them.
inline void st_shared_b32(uint32_t a, uint32_t v) { *static_cast<uint32_t*>(emu::shared_ptr(a, 4, "st.shared.b32")) = v; }
inline void st_shared_f32(uint32_t a, float v) { *static_cast<float*>(emu::shared_ptr(a, 4, "st.shared.f32")) = v; }
inline void st_shared_v4(uint32_t a, uint4 v) { *static_cast<uint4*>(emu::shared_ptr(a, 16, "st.shared.v4.b32")) = v; }
inline uint32_t ld_shared_b32(uint32_t a) { return *static_cast<const uint32_t*>(emu::shared_ptr(a, 4, "ld.shared.b32")); }
inline uint4 ld_shared_v4(uint32_t a) { return *static_cast<const uint4*>(emu::shared_ptr(a, 16, "ld.shared.v4.b32")); }
inline float2 ld_shared_v2f(uint32_t a) { return *static_cast<const float2*>(emu::shared_ptr(a, 8, "ld.shared.v2.f32")); }
inline float4 ld_shared_v4f(uint32_t a) { return *static_cast<const float4*>(emu::shared_ptr(a, 16, "ld.shared.v4.f32")); }

inline void cp_async_16(uint32_t dst, const void* src) { emu::cp_async(dst, src, 16, 16, "cp.async.cg 16"); }
inline void cp_async_16_zfill(uint32_t dst, const void* src, int bytes) {
  emu::cp_async(dst, src, 16, bytes, "cp.async.cg 16 (src-size)");
}
inline void cp_async_4(uint32_t dst, const void* src) { emu::cp_async(dst, src, 4, 4, "cp.async.ca 4"); }
inline void cp_async_4_zfill(uint32_t dst, const void* src, int bytes) {
  emu::cp_async(dst, src, 4, bytes, "cp.async.ca 4 (src-size)");
}
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  emu::cp_async_wait(N);
}

inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) { emu::ldmatrix(r, addr, 4, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) { emu::ldmatrix(r, addr, 4, true); }

template <class T>
inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "mma.m16n8k16 takes bf16 or f16");
  emu::mma_m16n8k16(c, a, b0, b1, std::is_same_v<T, __nv_bfloat16>);
}
inline void mma_m16n8k32_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu::mma_m16n8k32_s8(d, a, b0, b1);
}
template <bool kBF16>
inline void mma_sp_m16n8k32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t e) {
  emu::mma_sp_m16n8k32(d, a, b, e, kBF16);
}

// ex2.approx.ftz.f32: subnormal inputs and results flush to zero. exp2f is more accurate than the
// hardware's ~2 ulp, which the tests' tolerances cover.
inline float ex2_approx_ftz(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) x = 0.f;
  const float y = std::exp2(x);
  return std::fpclassify(y) == FP_SUBNORMAL ? 0.f : y;
}

template <class T>
inline const T* opaque(const T* p) {
  return p;
}

}  // namespace tforge::ptx
