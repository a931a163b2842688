// CPU int8 kernels: the W8A8 GEMM (exact int32 accumulation, optional fused
// dequantising epilogue) and per-row symmetric quantisation; semantics in
// common/int8_args.h.
// int8.cpp checks arguments, picks the ISA, packs the operands and spreads the
// work over OpenMP threads; int8_<isa>.cpp hold the kernels (the parts written
// once over a vector type are in int8_kernels.h).
//
// ISAs: scalar (portable), avx2 (AVX2 + FMA + F16C; vpmaddwd on int16) and
// avx512vnni (AVX-512 F/BW/VL + VNNI; vpdpbusd), picked at run time (see
// int8_kernel_isa). int8_avx512vnni.cpp is built on x86 next to int8_avx2.cpp
// unless TFORGE_NO_AVX512VNNI is defined.
//
// Two GEMM paths:
//   packed (M > Int8Tiling::rows_max_m): A and B are repacked once per call into
//     micro-panels (mr rows of A / nr columns of B, K padded to a multiple of ku),
//     then an mr x nr register-blocked micro-kernel runs over cache blocks
//     (kc x mc x nc), one OpenMP task per (mc, nc) block of C.
//   rows (small M, the decode case; also K == 0 and every M on the scalar ISA):
//     B is read as it is (no packing: it is the weight and is read once), the
//     rows of A are converted once, and OpenMP splits N.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/int8_args.h"

namespace tforge::cpu {

// Largest K for which every int32 accumulator is exact: |a * b| <= 128 * 128 =
// 2^14, so |acc| <= K * 2^14 < 2^31. The vector kernels accumulate modulo 2^32
// (their intermediate sums, which may include offsets, wrap), which gives the
// exact result whenever the final value fits in int32.
constexpr int64_t kInt8MaxK = (int64_t{1} << 17) - 1;

// How an ISA's GEMM kernels block the problem.
struct Int8Tiling {
  int mr = 0, nr = 0;         // micro-tile: rows of A x columns of B (mr == 0: no packed path)
  int ku = 1;                 // K is padded to a multiple of ku in packed panels
  int a_elem = 1, b_elem = 1; // bytes per element of a packed A / B panel
  int64_t kc = 0;             // K block (multiple of ku)
  int64_t mc = 0, nc = 0;     // M / N block of one task (multiples of mr / nr)
  bool row_corr = false;      // int8_pack_a returns corr[m], to subtract from the accumulators
  int64_t rows_max_m = 0;     // M <= rows_max_m: row kernel instead of the packed path
  int64_t rows_nb = 0;        // row kernel: columns per task (rows per task: kInt8RowsMT)
};

constexpr int64_t kInt8RowsMT = 64;  // row kernel: rows per task (a multiple of its 16-row tiles)

// Per-ISA kernels (scalar, avx2 and avx512vnni namespaces).
#define TFORGE_INT8_ISA_DECLS                                                                              \
  Int8Tiling int8_tiling();                                                                                \
  /* Output rows [m0, m0 + rows) x columns [n0, n0 + cols) from the int32 block acc (row stride ldc;     \
     0 repeats one row): c_i32 = acc - corr, or the dequantising epilogue into c. corr: per output row   \
     (corr[i] for row m0 + i), or null. */                                                                 \
  void int8_store(const Int8GemmArgs& a, const int32_t* acc, int64_t ldc, int64_t m0, int64_t rows,        \
                  int64_t n0, int64_t cols, const int32_t* corr);                                          \
  /* Row kernel: int8_rows_prep converts all M rows of A into prep (int8_rows_prep_bytes(M, K) bytes,      \
     64-byte aligned); int8_rows_gemm then writes output rows [m0, m1) x columns [n0, n1). */             \
  size_t int8_rows_prep_bytes(int64_t M, int64_t K);                                                       \
  void int8_rows_prep(const Int8GemmArgs& a, void* prep);                                                  \
  void int8_rows_gemm(const Int8GemmArgs& a, const void* prep, int64_t m0, int64_t m1, int64_t n0,         \
                      int64_t n1);                                                                         \
  /* quantize_rows for rows [r0, r1). */                                                                   \
  void quantize_rows_range(const QuantizeRowsArgs& a, int64_t r0, int64_t r1);

// Packed path (ISAs whose int8_tiling().mr > 0). Panels cover all of K (padded with zeros to
// Kp = round_up(K, ku)); A panel: mr * Kp * a_elem bytes, B panel: nr * Kp * b_elem bytes.
#define TFORGE_INT8_PACKED_DECLS                                                                           \
  /* One A panel from rows [0, rows) of a (rows <= mr; missing rows are zero); corr[mr] if row_corr. */    \
  void int8_pack_a(const int8_t* a, int64_t lda, int64_t rows, int64_t K, void* dst, int32_t* corr);       \
  /* One B panel from rows [0, cols) of b (output columns; cols <= nr). */                                 \
  void int8_pack_b(const int8_t* b, int64_t ldb, int64_t cols, int64_t K, void* dst);                      \
  /* c[mr x nr] (row stride ldc) = (or += if accumulate) the product of an A and a B panel over kc         \
     (a multiple of ku) values of k; ap / bp point at the panels' first k. */                             \
  void int8_tile(const void* ap, const void* bp, int64_t kc, int32_t* c, int64_t ldc, bool accumulate);

namespace scalar {
TFORGE_INT8_ISA_DECLS
}  // namespace scalar
namespace avx2 {
TFORGE_INT8_ISA_DECLS
TFORGE_INT8_PACKED_DECLS
}  // namespace avx2
namespace avx512vnni {
TFORGE_INT8_ISA_DECLS
TFORGE_INT8_PACKED_DECLS
}  // namespace avx512vnni
#undef TFORGE_INT8_ISA_DECLS
#undef TFORGE_INT8_PACKED_DECLS

// Name of the int8 kernel set chosen at run time: "avx512vnni", "avx2" or "scalar".
// TFORGE_CPU_ISA=scalar forces scalar, TFORGE_CPU_ISA=avx2 caps it at avx2.
const char* int8_kernel_isa();

// Checked entry points; run on `threads` OpenMP threads.
void int8_gemm(const Int8GemmArgs& a, int threads);          // int32 output or fused dequant epilogue
void quantize_rows(const QuantizeRowsArgs& a, int threads);      // per-row symmetric int8

}  // namespace tforge::cpu
