// 8-wide fp32 vector over AVX2+FMA, with bf16 load/store (round to nearest
// even, NaN kept quiet). Included *inside* namespace tforge::cpu::avx2 by
// translation units built with -mavx2 -mfma (after <immintrin.h>), so that no
// inline function compiled with AVX2 can be picked by the linker for the
// scalar build: each ISA gets its own copy under its own namespace.

struct Vec {
  static constexpr int W = 8;
  __m256 v;

  static Vec zero() { return {_mm256_setzero_ps()}; }
  static Vec set1(float f) { return {_mm256_set1_ps(f)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load(const uint16_t* p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
  }
  static void store(float* p, Vec a) { _mm256_storeu_ps(p, a.v); }
  static void store(uint16_t* p, Vec a) {
    __m256i bits = _mm256_castps_si256(a.v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    __m256i nan_bits = _mm256_or_si256(bits, _mm256_set1_epi32(0x00400000));
    __m256 is_nan = _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q);
    __m256i out = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(rounded), _mm256_castsi256_ps(nan_bits), is_nan));
    out = _mm256_srli_epi32(out, 16);
    __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(out), _mm256_extracti128_si256(out, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }
  friend Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
  // a * b + c
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  float hsum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

// 8 x 8 transpose of fp32 lanes: x[i] lane j becomes x[j] lane i.
inline void transpose8(__m256* x) {
  const __m256 t0 = _mm256_unpacklo_ps(x[0], x[1]), t1 = _mm256_unpackhi_ps(x[0], x[1]);
  const __m256 t2 = _mm256_unpacklo_ps(x[2], x[3]), t3 = _mm256_unpackhi_ps(x[2], x[3]);
  const __m256 t4 = _mm256_unpacklo_ps(x[4], x[5]), t5 = _mm256_unpackhi_ps(x[4], x[5]);
  const __m256 t6 = _mm256_unpacklo_ps(x[6], x[7]), t7 = _mm256_unpackhi_ps(x[6], x[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  x[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  x[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  x[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  x[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  x[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  x[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  x[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  x[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// The same for 32-bit integer lanes (the int8 kernels' packing).
inline void transpose8(__m256i* r) {
  __m256 x[8];
  for (int i = 0; i < 8; ++i) x[i] = _mm256_castsi256_ps(r[i]);
  transpose8(x);
  for (int i = 0; i < 8; ++i) r[i] = _mm256_castps_si256(x[i]);
}
