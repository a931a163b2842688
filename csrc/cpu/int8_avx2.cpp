// Int8 kernels built with -mavx2 -mfma -mf16c (see CMakeLists.txt); called
// only when CPUID reports AVX2+FMA+F16C.
//
// No VNNI here, and no vpmaddubsw (its u8 x s8 pair sums saturate int16): both
// operands are sign-extended to int16 and multiplied with vpmaddwd, whose
// int16 x int16 pair sums are exact in int32, for the full int8 range.
//   packed path: 6 x 16 micro-kernel, 12 ymm accumulators. A panel: [K/2][6]
//     int32 (each an int16 pair a[m, 2p], a[m, 2p+1]), broadcast; B panel:
//     [K/2][16] int16 pairs (two ymm per pair of k).
//   row kernel: 16 values of k per step, B rows sign-extended as they are read.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/dtype.h"
#include "cpu/int8.h"

namespace tforge::cpu::avx2 {
#include "cpu/vec_one.h"
#include "cpu/vec_avx2.h"
#define TFORGE_INT8_VEC_AVX2 1  // int8_kernels.h: 8-wide hooks with AVX2 + F16C

namespace {

inline __m256i load16_i8_to_i16(const int8_t* p) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// ---- row kernel step: 16 values of k; A pre-extended to int16, B extended on the fly
struct RowsK {
  static constexpr int CH = 16;
  static constexpr int64_t KB = 256;  // 4096 values of k per block: 4 rows of A use 32 KB of L1/L2
  static constexpr int64_t NB = 48;
  static constexpr bool kRowCorr = false;
  // accumulators + B registers + A: mr * nr + nr + 1 <= 16 ymm
  static constexpr int nr_for(int mr) { return mr == 1 ? 8 : mr == 2 ? 4 : mr == 3 ? 3 : 2; }
  using Acc = __m256i;
  using A = __m256i;
  using B = __m256i;
  static Acc zero() { return _mm256_setzero_si256(); }
  // One load per row of A and step (GCC would otherwise fold it into each of its nr madds).
  static A load_a(const char* row, int64_t c) {
    __m256i a = _mm256_load_si256(reinterpret_cast<const __m256i*>(row) + c);
    __asm__("" : "+x"(a));
    return a;
  }
  static B load_b(const int8_t* row, int64_t c) { return load16_i8_to_i16(row + c * CH); }
  // The partial last chunk: the 16 bytes ending at K (prep_row zeroes the values of
  // A that the full chunks already counted); for K < 16, a zero-padded copy.
  static B load_b_tail(const int8_t* row, int64_t K) {
    if (K >= CH) return load16_i8_to_i16(row + K - CH);
    alignas(16) int8_t t[CH] = {};
    std::memcpy(t, row, static_cast<size_t>(K));
    return load16_i8_to_i16(t);
  }
  // The add is written in place: with plain intrinsics GCC 12 puts each sum in a
  // fresh register and copies it back (a vmovdqa per step, 30% more instructions).
  static Acc dot(Acc acc, A a, B b) {
    const __m256i t = _mm256_madd_epi16(a, b);
    __asm__("vpaddd {%1, %0, %0|%0, %0, %1}" : "+x"(acc) : "x"(t));  // AT&T | Intel syntax
    return acc;
  }
  static int32_t hsum(Acc v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
  }
  static int64_t row_bytes(int64_t K) { return ((K + CH - 1) / CH * CH * 2 + 63) / 64 * 64; }
  static void prep_row(const int8_t* a, int64_t K, char* dst, int32_t* corr) {
    int16_t* d = reinterpret_cast<int16_t*>(dst);
    const int64_t nfull = K / CH, rem = K % CH;
    int64_t k = 0;
    for (; k < nfull * CH; k += CH) _mm256_store_si256(reinterpret_cast<__m256i*>(d + k), load16_i8_to_i16(a + k));
    for (int64_t j = nfull * CH; j < row_bytes(K) / 2; ++j) d[j] = 0;
    if (rem) {
      if (K >= CH) {  // lane j of the tail chunk is k = K - 16 + j; those below nfull * 16 are counted already
        for (int64_t j = CH - rem; j < CH; ++j) d[nfull * CH + j] = a[K - CH + j];
      } else {
        for (int64_t j = 0; j < K; ++j) d[j] = a[j];
      }
    }
    *corr = 0;
  }
};

}  // namespace

#include "cpu/int8_kernels.h"

namespace {

// ---- packed path

constexpr int MR = 6, NR = 16;

// Largest M for the row kernel (measured on Zen 4: on par with the packed path up
// to M ~ 128, behind it beyond). Overridable at build time, e.g. 0 or a large
// value to test one path alone.
#ifndef TFORGE_INT8_AVX2_ROWS_MAX_M
#define TFORGE_INT8_AVX2_ROWS_MAX_M 64
#endif

// Rows [0, 8) (those >= nrows are zero) of a at k in [k, k + 16), sign-extended to
// int16 and transposed as 32-bit pairs: r[j] = pair k/2 + j of the 8 rows.
// Reads only the bytes below K (a zero-padded copy for the last, partial chunk).
inline void load_pairs_8x16(const int8_t* a, int64_t ld, int nrows, int64_t k, int64_t K, __m256i* r) {
  if (k + 16 <= K) {
    for (int i = 0; i < 8; ++i) r[i] = i < nrows ? load16_i8_to_i16(a + i * ld + k) : _mm256_setzero_si256();
  } else {
    for (int i = 0; i < 8; ++i) {
      alignas(16) int8_t t[16] = {};
      if (i < nrows) std::memcpy(t, a + i * ld + k, static_cast<size_t>(K - k));
      r[i] = load16_i8_to_i16(t);
    }
  }
  transpose8(r);
}

}  // namespace

Int8Tiling int8_tiling() {
  Int8Tiling t;
  t.mr = MR;
  t.nr = NR;
  t.ku = 2;
  t.a_elem = 2;
  t.b_elem = 2;
  t.kc = 512;  // B micro-panel: 16 KB (L1); A micro-panel: 6 KB
  t.mc = 240;  // A block: 240 KB (L2)
  t.nc = 256;  // C block: 240 KB (L2)
  t.row_corr = false;
  t.rows_max_m = TFORGE_INT8_AVX2_ROWS_MAX_M;
  t.rows_nb = RowsK::NB;
  return t;
}

void int8_pack_a(const int8_t* a, int64_t lda, int64_t rows, int64_t K, void* dst, int32_t* corr) {
  const int64_t np = (K + 1) / 2;
  int32_t* d = static_cast<int32_t*>(dst);
  const int nrows = static_cast<int>(rows);
  for (int64_t k = 0; k < K; k += 16) {
    __m256i r[8];
    load_pairs_8x16(a, lda, nrows, k, K, r);
    const int64_t p0 = k / 2;
    for (int64_t j = 0; j < 8 && p0 + j < np; ++j) {  // rows 0..5 of pair p0 + j
      int32_t* o = d + (p0 + j) * MR;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm256_castsi256_si128(r[j]));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(o + 4), _mm256_extracti128_si256(r[j], 1));
    }
  }
  if (corr)
    for (int i = 0; i < MR; ++i) corr[i] = 0;
}

void int8_pack_b(const int8_t* b, int64_t ldb, int64_t cols, int64_t K, void* dst) {
  const int64_t np = (K + 1) / 2;
  int32_t* d = static_cast<int32_t*>(dst);  // [np][16] int16 pairs
  for (int o = 0; o < NR / 8; ++o) {
    const int nrows = static_cast<int>(cols - o * 8 < 0 ? 0 : cols - o * 8 > 8 ? 8 : cols - o * 8);
    for (int64_t k = 0; k < K; k += 16) {
      __m256i r[8];
      load_pairs_8x16(b + o * 8 * ldb, ldb, nrows, k, K, r);
      const int64_t p0 = k / 2;
      for (int64_t j = 0; j < 8 && p0 + j < np; ++j)
        _mm256_store_si256(reinterpret_cast<__m256i*>(d + (p0 + j) * NR + o * 8), r[j]);
    }
  }
}

// c[6 x 16] (=, or += if accumulate) over kc / 2 pairs of k.
void int8_tile(const void* ap, const void* bp, int64_t kc, int32_t* c, int64_t ldc, bool accumulate) {
  const int32_t* A = static_cast<const int32_t*>(ap);
  const __m256i* B = static_cast<const __m256i*>(bp);
  const int64_t np = kc / 2;
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t p = 0; p < np; ++p) {
    const __m256i b0 = _mm256_load_si256(B + 2 * p), b1 = _mm256_load_si256(B + 2 * p + 1);
    const int32_t* a = A + p * MR;
    __m256i x = _mm256_set1_epi32(a[0]);
    c00 = _mm256_add_epi32(c00, _mm256_madd_epi16(x, b0));
    c01 = _mm256_add_epi32(c01, _mm256_madd_epi16(x, b1));
    x = _mm256_set1_epi32(a[1]);
    c10 = _mm256_add_epi32(c10, _mm256_madd_epi16(x, b0));
    c11 = _mm256_add_epi32(c11, _mm256_madd_epi16(x, b1));
    x = _mm256_set1_epi32(a[2]);
    c20 = _mm256_add_epi32(c20, _mm256_madd_epi16(x, b0));
    c21 = _mm256_add_epi32(c21, _mm256_madd_epi16(x, b1));
    x = _mm256_set1_epi32(a[3]);
    c30 = _mm256_add_epi32(c30, _mm256_madd_epi16(x, b0));
    c31 = _mm256_add_epi32(c31, _mm256_madd_epi16(x, b1));
    x = _mm256_set1_epi32(a[4]);
    c40 = _mm256_add_epi32(c40, _mm256_madd_epi16(x, b0));
    c41 = _mm256_add_epi32(c41, _mm256_madd_epi16(x, b1));
    x = _mm256_set1_epi32(a[5]);
    c50 = _mm256_add_epi32(c50, _mm256_madd_epi16(x, b0));
    c51 = _mm256_add_epi32(c51, _mm256_madd_epi16(x, b1));
  }
  const __m256i acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < 2; ++j) {
      __m256i* o = reinterpret_cast<__m256i*>(c + i * ldc + j * 8);
      __m256i v = acc[i][j];
      if (accumulate) v = _mm256_add_epi32(v, _mm256_loadu_si256(o));
      _mm256_storeu_si256(o, v);
    }
}

}  // namespace tforge::cpu::avx2
