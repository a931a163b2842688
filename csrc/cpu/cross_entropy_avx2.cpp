// Cross-entropy kernels built with -mavx2 -mfma (see CMakeLists.txt); called only when CPUID reports
// AVX2+FMA. The hooks cross_entropy_kernels.h needs (max, exp, horizontal max) are defined here.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "common/dtype.h"
#include "cpu/cross_entropy.h"

namespace tforge::cpu::avx2 {
#include "cpu/vec_one.h"
#include "cpu/vec_avx2.h"

namespace {

inline Vec vmax(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }  // maxps returns b when either is NaN
inline VecOne vmax(VecOne a, VecOne b) { return !(b.v <= a.v) ? b : a; }

inline Vec vninf0(Vec x) {
  const __m256 is_ninf = _mm256_cmp_ps(x.v, _mm256_set1_ps(-__builtin_inff()), _CMP_EQ_OQ);
  return {_mm256_andnot_ps(is_ninf, x.v)};
}
inline VecOne vninf0(VecOne x) { return {x.v == -__builtin_inff() ? 0.f : x.v}; }

// e^x = 2^n e^r with n = round(x log2 e) and r = x - n ln 2 (ln 2 in two parts, so r is exact to
// fp32), |r| <= ln(2) / 2; e^r by its Taylor series to r^7 (truncation below 6e-9 relative); 2^n
// built in the exponent bits. Inputs are clamped to 88 (below FLT_MAX's log); below -87.3 (e^x under
// FLT_MIN) and at -inf the result is 0. NaN stays NaN (minps and the compare let it through).
inline Vec vexp(Vec xv) {
  const __m256 x = _mm256_min_ps(_mm256_set1_ps(88.f), xv.v);
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
  const __m256 n =
      _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.f / 5040.f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 720.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return {_mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)))};
}
inline VecOne vexp(VecOne x) { return {std::exp(x.v)}; }

inline float hmax(Vec a) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
inline float hmax(VecOne a) { return a.v; }

}  // namespace

#include "cpu/cross_entropy_kernels.h"
}  // namespace tforge::cpu::avx2
