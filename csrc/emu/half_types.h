// __half and __nv_bfloat16 for the emulator: 16-bit storage types whose
// conversions round to nearest even exactly as cvt.rn.f16.f32 /
// cvt.rn.bf16.f32 do (NaN stays NaN, overflow goes to infinity, fp16
// subnormals are kept). Only the operations tforge's kernels use.
#pragma once
#include <cstdint>
#include <cstring>

namespace tforge::emu {

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16_rn(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  const uint32_t round = 0x7fffu + ((u >> 16) & 1u);  // ties to even
  return static_cast<uint16_t>((u + round) >> 16);
}
inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

// IEEE binary32 -> binary16, round to nearest even, with subnormals.
inline uint16_t f32_to_f16_rn(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: infinity
  const int exp = static_cast<int>(a >> 23) - 127;
  if (exp >= -14) {  // normal half: drop 13 mantissa bits with ties to even
    const uint32_t m = a + 0xfffu + ((a >> 13) & 1u);
    return static_cast<uint16_t>(sign | (((m >> 13) - (112u << 10)) & 0x7fffu));
  }
  if (exp < -25) return sign;  // below half the smallest subnormal: zero
  // subnormal half: value = mant * 2^-24 with the implicit bit made explicit
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const int shift = 13 + (-14 - exp);  // 14..24 bits dropped
  const uint32_t half_ulp = 1u << (shift - 1);
  const uint32_t rem = mant & ((1u << shift) - 1u);
  uint32_t q = mant >> shift;
  if (rem > half_ulp || (rem == half_ulp && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
}
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
  if (e != 0) return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
  if (m == 0) return bits_f32(sign);
  return (sign ? -1.f : 1.f) * static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
}

}  // namespace tforge::emu

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

inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {tforge::emu::f32_to_bf16_rn(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return tforge::emu::bf16_to_f32(h.bits); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) { return {v}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }

inline __half __float2half_rn(float f) { return {tforge::emu::f32_to_f16_rn(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) { return tforge::emu::f16_to_f32(h.bits); }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
inline __half __ushort_as_half(unsigned short v) { return {v}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
