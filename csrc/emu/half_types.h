// __half and __nv_bfloat16 for the emulator: 16-bit storage types whose
// conversions round to nearest even exactly as cvt.rn.f16.f32 /
// cvt.rn.bf16.f32 do (NaN stays NaN, overflow goes to infinity, fp16
// subnormals are kept; tests/test_emu_layouts.py checks them bit for bit
// against PyTorch). Only the operations tforge's kernels use.
#pragma once
#include <cstdint>

#include "common/dtype.h"  // the conversions themselves, shared with the CPU kernels


struct __nv_bfloat16 {
  uint16_t bits;
};
struct __half {
  uint16_t bits;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
struct alignas(4) __half2 {
  __half x, y;
};

inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {tforge::float_to_bf16(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return tforge::bf16_to_float(h.bits); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) { return {v}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }

inline __half __float2half_rn(float f) { return {tforge::float_to_half(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) { return tforge::half_to_float(h.bits); }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
inline __half __ushort_as_half(unsigned short v) { return {v}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
