// Attention kernels built with -mavx2 -mfma -mf16c (see CMakeLists.txt);
// called only when CPUID reports AVX2+FMA. The ISA hooks attention_kernels.h
// needs (max, exp2, 8x8 transposes) are defined here with intrinsics.
#include <immintrin.h>

#include <cstdint>

#include "common/dtype.h"
#include "cpu/attention.h"

namespace tforge::cpu::avx2 {
#include "cpu/vec_one.h"
#include "cpu/vec_avx2.h"

namespace {

inline Vec vmax(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
inline Vec vround(Vec x) {
  __asm__("" : "+x"(x.v));  // an empty asm the compiler cannot see through: no FMA contraction across it
  return x;
}

inline Vec vninf0(Vec x) {
  const __m256 is_ninf = _mm256_cmp_ps(x.v, _mm256_set1_ps(-__builtin_inff()), _CMP_EQ_OQ);
  return {_mm256_andnot_ps(is_ninf, x.v)};
}

// 2^x: x = n + r with n = round(x), |r| <= 1/2; 2^r by a degree-6 polynomial
// (near-minimax, 2e-9 relative, so ~1e-7 after fp32 rounding, as expf);
// 2^n built in the exponent bits. x < -126 (and -inf) gives exactly 0, no
// denormals; NaN stays NaN. Callers pass x <= ~0 (scores minus their running
// max or logsumexp, in log2 units), so there is no overflow check.
inline Vec vexp2(Vec xv) {
  const __m256 x = xv.v;
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-126.f), _CMP_LT_OQ);
  // Adding 1.5 * 2^23 rounds x to an integer n, and leaves n + 127 in the low mantissa bits of t.
  const __m256 shifter = _mm256_set1_ps(12582912.f + 127.f);
  const __m256 t = _mm256_add_ps(x, shifter);
  const __m256 r = _mm256_sub_ps(x, _mm256_sub_ps(t, shifter));  // exact
  __m256 y = _mm256_set1_ps(1.5356125368e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3398817973e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(9.6184276044e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.5503327399e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(2.4022647738e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(6.9314718246e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.f));
  const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23));
  return {_mm256_andnot_ps(tiny, _mm256_mul_ps(y, scale))};
}

// dst[c * ldd + r] (= or +=) src[r * lds + c] * scale * (cscale ? cscale[c] : 1): 8x8 tiles in registers,
// scalar edges.
template <class TS, class TD, bool ACC>
void transpose(const TS* src, int64_t lds, TD* dst, int64_t ldd, int64_t rows, int64_t cols, float scale,
               const float* cscale) {
  static_assert(!ACC || sizeof(TD) == 4, "accumulating transposes are fp32 only");
  const __m256 sv = _mm256_set1_ps(scale);
  int64_t r0 = 0;
  for (; r0 + 8 <= rows; r0 += 8) {
    int64_t c0 = 0;
    for (; c0 + 8 <= cols; c0 += 8) {
      __m256 x[8];
      for (int i = 0; i < 8; ++i) x[i] = Vec::load(src + (r0 + i) * lds + c0).v;
      transpose8(x);
      for (int c = 0; c < 8; ++c) {
        __m256 y = _mm256_mul_ps(x[c], sv);
        if (cscale) y = _mm256_mul_ps(y, _mm256_set1_ps(cscale[c0 + c]));
        TD* d = dst + (c0 + c) * ldd + r0;
        if constexpr (ACC) y = _mm256_add_ps(y, _mm256_loadu_ps(reinterpret_cast<const float*>(d)));
        Vec::store(d, Vec{y});
      }
    }
    for (; c0 < cols; ++c0) {
      const float cs = scale * (cscale ? cscale[c0] : 1.f);
      for (int i = 0; i < 8; ++i) {
        float y = VecOne::load(src + (r0 + i) * lds + c0).v * cs;
        TD* d = dst + c0 * ldd + r0 + i;
        if constexpr (ACC) y += VecOne::load(d).v;
        VecOne::store(d, VecOne{y});
      }
    }
  }
  for (; r0 < rows; ++r0)
    for (int64_t c = 0; c < cols; ++c) {
      float y = VecOne::load(src + r0 * lds + c).v * scale * (cscale ? cscale[c] : 1.f);
      TD* d = dst + c * ldd + r0;
      if constexpr (ACC) y += VecOne::load(d).v;
      VecOne::store(d, VecOne{y});
    }
}

}  // namespace

#include "cpu/attention_kernels.h"
}  // namespace tforge::cpu::avx2
