// Int8 kernels built with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx2
// -mfma -mf16c (see CMakeLists.txt); called only when CPUID reports
// AVX512F/BW/VL/VNNI (and the OS saves the AVX-512 state) and TFORGE_CPU_ISA
// is neither "avx2" nor "scalar".
//
// vpdpbusd multiplies unsigned by signed bytes, 4 products summed into each
// int32 lane. B is made unsigned, u = b + 128 (= b ^ 0x80), and A stays signed:
//   sum_k u[n, k] a[m, k] = acc[m, n] + 128 * sum_k a[m, k]
// so corr[m] = 128 * sum_k a[m, k], computed when A is packed (or prepared), is
// subtracted in the epilogue. Every product fits (|u a| <= 255 * 128) and the
// lanes wrap modulo 2^32, so acc is exact whenever it fits in int32.
//   packed path: 8 x 32 micro-kernel, 16 zmm accumulators. A panel: [K/4][8]
//     int32 (4 signed bytes of a row, broadcast); B panel: [K/4][32] int32 (4
//     unsigned bytes of a column; two zmm per 4 values of k).
//   row kernel: 64 values of k per step, B read as it is and flipped to
//     unsigned on the fly (masked loads for the last, partial step).
// The epilogue and quantize_rows use the 8-wide AVX2 code of int8_kernels.h.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/dtype.h"
#include "cpu/int8.h"

namespace tforge::cpu::avx512vnni {
#include "cpu/vec_one.h"
#include "cpu/vec_avx2.h"
#define TFORGE_INT8_VEC_AVX2 1  // int8_kernels.h: 8-wide hooks with AVX2 + F16C

namespace {

inline __m512i to_unsigned(__m512i b) { return _mm512_xor_si512(b, _mm512_set1_epi32(static_cast<int>(0x80808080u))); }

// acc += per lane sum of 4 products u (unsigned bytes) x s (signed bytes), in place.
// Written as asm: with _mm512_dpbusd_epi32 on arrays of accumulators GCC 12 moves
// every accumulator through a fresh register (and the stack) at each step.
inline __m512i dpbusd(__m512i acc, __m512i u, __m512i s) {
  __asm__("vpdpbusd {%2, %1, %0|%0, %1, %2}" : "+v"(acc) : "v"(u), "v"(s));  // AT&T | Intel syntax
  return acc;
}

inline int32_t hsum8(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// ---- row kernel step: 64 values of k
struct RowsK {
  static constexpr int CH = 64;
  static constexpr int64_t KB = 64;  // 4096 values of k per block: 4 rows of A use 16 KB of L1
  static constexpr int64_t NB = 64;
  static constexpr bool kRowCorr = true;
  static constexpr int nr_for(int mr) { return mr <= 2 ? 8 : 4; }  // mr * nr + nr + 1 <= 32 zmm
  using Acc = __m512i;
  using A = __m512i;
  using B = __m512i;
  static Acc zero() { return _mm512_setzero_si512(); }
  static A load_a(const char* row, int64_t c) { return _mm512_load_si512(reinterpret_cast<const __m512i*>(row) + c); }
  static B load_b(const int8_t* row, int64_t c) { return to_unsigned(_mm512_loadu_si512(row + c * CH)); }
  static B load_b_tail(const int8_t* row, int64_t K) {  // K % 64 != 0; masked-off bytes are not read
    const int64_t k0 = K / CH * CH;
    const __mmask64 m = _cvtu64_mask64((uint64_t{1} << (K - k0)) - 1);
    return to_unsigned(_mm512_maskz_loadu_epi8(m, row + k0));  // padding u = 128 meets a = 0
  }
  static Acc dot(Acc acc, A a, B b) { return dpbusd(acc, b, a); }
  // Zero-masked forms: the plain ones start from _mm*_undefined_*, which GCC 12
  // flags with a false -Wmaybe-uninitialized once inlined.
  static int32_t hsum(Acc v) {
    const __m512i s = _mm512_add_epi32(v, _mm512_maskz_shuffle_i64x2(0xff, v, v, 0x4e));
    return hsum8(_mm512_maskz_extracti64x4_epi64(0xf, s, 0));
  }
  static int64_t row_bytes(int64_t K) { return (K + CH - 1) / CH * CH; }
  static void prep_row(const int8_t* a, int64_t K, char* dst, int32_t* corr) {
    const int64_t rb = row_bytes(K);
    if (K > 0) std::memcpy(dst, a, static_cast<size_t>(K));
    std::memset(dst + K, 0, static_cast<size_t>(rb - K));
    int32_t s = 0;  // |s| <= 128 K: no overflow
    for (int64_t k = 0; k < K; ++k) s += a[k];
    *corr = 128 * s;
  }
};

}  // namespace

#include "cpu/int8_kernels.h"

namespace {

// ---- packed path

constexpr int MR = 8;
constexpr int NRV = 2;  // zmm per row of the micro-tile
constexpr int NR = 16 * NRV;

// Largest M for the row kernel (measured on Zen 4: on par with the packed path up
// to M ~ 512, behind it at 2048^3, well ahead below M ~ 64, where packing B costs
// more). Overridable at build time, e.g. 0 or a large value to test one path alone.
#ifndef TFORGE_INT8_VNNI_ROWS_MAX_M
#define TFORGE_INT8_VNNI_ROWS_MAX_M 128
#endif

// Rows [0, 8) (those >= nrows are zero) of a at k in [k, k + 32), transposed as
// 32-bit quads: r[j] = quad k/4 + j of the 8 rows. Reads only the bytes below K
// (a zero-padded copy for the last, partial chunk).
inline void load_quads_8x32(const int8_t* a, int64_t ld, int nrows, int64_t k, int64_t K, __m256i* r) {
  if (k + 32 <= K) {
    for (int i = 0; i < 8; ++i)
      r[i] = i < nrows ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i * ld + k)) : _mm256_setzero_si256();
  } else {
    for (int i = 0; i < 8; ++i) {
      alignas(32) int8_t t[32] = {};
      if (i < nrows) std::memcpy(t, a + i * ld + k, static_cast<size_t>(K - k));
      r[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(t));
    }
  }
}

}  // namespace

Int8Tiling int8_tiling() {
  Int8Tiling t;
  t.mr = MR;
  t.nr = NR;
  t.ku = 4;
  t.a_elem = 1;
  t.b_elem = 1;
  t.kc = 512;   // B micro-panel: 16 KB (L1); A micro-panel: 4 KB
  t.mc = 256;   // A block: 128 KB (L2)
  t.nc = 256;   // C block: 256 KB (L2)
  t.row_corr = true;
  t.rows_max_m = TFORGE_INT8_VNNI_ROWS_MAX_M;
  t.rows_nb = RowsK::NB;
  return t;
}

void int8_pack_a(const int8_t* a, int64_t lda, int64_t rows, int64_t K, void* dst, int32_t* corr) {
  static_assert(MR == 8, "one 8 x 8 transpose per 32 values of k");
  const int64_t nq = (K + 3) / 4;
  int32_t* d = static_cast<int32_t*>(dst);
  const int nrows = static_cast<int>(rows);
  const __m256i ones = _mm256_set1_epi8(1);
  __m256i sum[8];
  for (int i = 0; i < 8; ++i) sum[i] = _mm256_setzero_si256();
  for (int64_t k = 0; k < K; k += 32) {
    __m256i r[8];
    load_quads_8x32(a, lda, nrows, k, K, r);
    for (int i = 0; i < 8; ++i) sum[i] = _mm256_dpbusd_epi32(sum[i], ones, r[i]);
    transpose8(r);
    const int64_t q0 = k / 4;
    for (int64_t j = 0; j < 8 && q0 + j < nq; ++j)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + (q0 + j) * MR), r[j]);
  }
  for (int i = 0; i < MR; ++i) corr[i] = 128 * hsum8(sum[i]);
}

void int8_pack_b(const int8_t* b, int64_t ldb, int64_t cols, int64_t K, void* dst) {
  const int64_t nq = (K + 3) / 4;
  int32_t* d = static_cast<int32_t*>(dst);  // [nq][32] quads of unsigned bytes
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int o = 0; o < NR / 8; ++o) {
    const int nrows = static_cast<int>(cols - o * 8 < 0 ? 0 : cols - o * 8 > 8 ? 8 : cols - o * 8);
    for (int64_t k = 0; k < K; k += 32) {
      __m256i r[8];
      load_quads_8x32(b + o * 8 * ldb, ldb, nrows, k, K, r);
      for (int i = 0; i < 8; ++i) r[i] = _mm256_xor_si256(r[i], flip);
      transpose8(r);
      const int64_t q0 = k / 4;
      for (int64_t j = 0; j < 8 && q0 + j < nq; ++j)
        _mm256_store_si256(reinterpret_cast<__m256i*>(d + (q0 + j) * NR + o * 8), r[j]);
    }
  }
}

// c[8 x 32] (=, or += if accumulate) over kc / 4 quads of k.
void int8_tile(const void* ap, const void* bp, int64_t kc, int32_t* c, int64_t ldc, bool accumulate) {
  const int32_t* A = static_cast<const int32_t*>(ap);
  const __m512i* B = static_cast<const __m512i*>(bp);
  const int64_t nq = kc / 4;
  __m512i acc[MR][NRV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NRV; ++j) acc[i][j] = _mm512_setzero_si512();
  for (int64_t q = 0; q < nq; ++q) {
    __m512i b[NRV];
    for (int j = 0; j < NRV; ++j) b[j] = _mm512_load_si512(B + q * NRV + j);
    for (int i = 0; i < MR; ++i) {
      const __m512i a = _mm512_set1_epi32(A[q * MR + i]);
      for (int j = 0; j < NRV; ++j) acc[i][j] = dpbusd(acc[i][j], b[j], a);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NRV; ++j) {
      int32_t* o = c + i * ldc + j * 16;
      __m512i v = acc[i][j];
      if (accumulate) v = _mm512_add_epi32(v, _mm512_loadu_si512(o));
      _mm512_storeu_si512(o, v);
    }
}

}  // namespace tforge::cpu::avx512vnni
