// Dtype codes shared by Python (tforge/_native.py) and native code, and
// host-side bf16 / fp16 <-> fp32 conversion (round to nearest even, NaN kept
// quiet), bit for bit what the GPU's cvt.rn and x86's F16C give. Used by the
// scalar CPU kernels and by the CUDA emulator's __half / __nv_bfloat16.
#pragma once
#include <cstdint>
#include <cstring>

namespace tforge {

enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

inline const char* dtype_name(int code) {
  switch (code) {
    case kFloat32: return "float32";
    case kBFloat16: return "bfloat16";
    case kFloat16: return "float16";
    default: return "unknown";
  }
}

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

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// IEEE half -> float (exact; NaNs are quieted, as F16C does).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m * 2^-24, exact in fp32
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;
    return bits_f32(f32_bits(v) | sign);
  }
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13) | (m ? 0x00400000u : 0u));
  return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

// float -> IEEE half, round to nearest even (overflow to inf, subnormals rounded
// correctly, NaN kept a quiet NaN), as F16C's vcvtps2ph does.
inline uint16_t float_to_half(float f) {
  uint32_t u = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  uint16_t o;
  if (u >= 0x47800000u) {  // |f| >= 65536 (rounds to inf), inf or NaN
    o = u > 0x7f800000u ? static_cast<uint16_t>(0x7e00u | ((u >> 13) & 0x3ffu)) : 0x7c00u;
  } else if (u < 0x38800000u) {  // below 2^-14: half subnormal or zero; the fp32 add rounds to nearest even
    const float denorm_magic = 0.5f;  // 2^-1: its ulp is 2^-24, the half subnormal step
    o = static_cast<uint16_t>(f32_bits(bits_f32(u) + denorm_magic) - f32_bits(denorm_magic));
  } else {  // normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even
    const uint32_t odd = (u >> 13) & 1u;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + odd;
    o = static_cast<uint16_t>(u >> 13);  // may carry into the exponent: up to inf, as it should
  }
  return static_cast<uint16_t>(o | sign);
}

}  // namespace tforge
