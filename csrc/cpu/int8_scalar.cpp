// Portable int8 kernels: the fallback for CPUs without AVX2 (and what
// TFORGE_CPU_ISA=scalar forces). Only the row kernel (no packed path), one
// value of k per step; fp16 converted in software. Results are bit-identical
// to the vector kernels' (exact int32; the same fp32 epilogue, no FMA).
#include <cstdint>
#include <cstring>

#include "common/dtype.h"
#include "cpu/int8.h"

namespace tforge::cpu::scalar {
#include "cpu/vec_one.h"
using Vec = VecOne;

namespace {

// Row kernel step: one value of k.
struct RowsK {
  static constexpr int CH = 1;
  static constexpr int64_t KB = 2048;
  static constexpr int64_t NB = 48;
  static constexpr bool kRowCorr = false;
  static constexpr int nr_for(int mr) { return mr == 1 ? 4 : mr == 2 ? 3 : 2; }
  using Acc = int32_t;
  using A = int32_t;
  using B = int32_t;
  static Acc zero() { return 0; }
  static A load_a(const char* row, int64_t c) { return reinterpret_cast<const int8_t*>(row)[c]; }
  static B load_b(const int8_t* row, int64_t c) { return row[c]; }
  static B load_b_tail(const int8_t*, int64_t) { return 0; }  // CH == 1: never partial
  // |acc| stays below 2^31 for K <= kInt8MaxK (partial sums of terms of at most 2^14)
  static Acc dot(Acc acc, A a, B b) { return acc + a * b; }
  static int32_t hsum(Acc v) { return v; }
  static int64_t row_bytes(int64_t K) { return (K + 63) / 64 * 64; }
  static void prep_row(const int8_t* a, int64_t K, char* dst, int32_t* corr) {
    if (K > 0) std::memcpy(dst, a, static_cast<size_t>(K));
    *corr = 0;
  }
};

}  // namespace

#include "cpu/int8_kernels.h"

Int8Tiling int8_tiling() {
  Int8Tiling t;
  t.rows_max_m = INT64_MAX;  // no packed path
  t.rows_nb = RowsK::NB;
  return t;
}

}  // namespace tforge::cpu::scalar
