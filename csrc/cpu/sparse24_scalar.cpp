// Portable 2:4 kernels: the fallback for CPUs without AVX2 (and what
// TFORGE_CPU_ISA=scalar forces). Row kernel only (no packed path): x rows are
// converted to fp32 once, then each output is a loop over the groups of its
// weight row, two multiply-adds per group.
#include <cstdint>

#include "common/dtype.h"
#include "cpu/sparse24.h"

namespace tforge::cpu::scalar {
#include "cpu/sparse24_kernels.h"

namespace {

int64_t prep_row_floats(int64_t K) { return (K + 15) / 16 * 16; }  // 64-byte rows

template <int DT, int VT>
void rows_t(const Sparse24LinearArgs& a, const float* prep, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t G = a.K / 4, mstride = (a.K + 7) / 8, rf = prep_row_floats(a.K);
  const size_t vsize = VT == kFloat32 ? 4 : VT == kBFloat16 ? 2 : 1;
  for (int64_t n = n0; n < n1; ++n) {
    const void* vrow = static_cast<const char*>(a.values) + static_cast<size_t>(n * (a.K / 2)) * vsize;
    const uint8_t* mrow = a.meta + n * mstride;
    for (int64_t m = m0; m < m1; ++m) {
      const float acc = s24_dot_groups<VT>(vrow, mrow, prep + m * rf, 0, G);
      s24_store<DT>(a.y, m * a.y_stride + n, s24_epilogue(a, n, acc));
    }
  }
}

}  // namespace

Sparse24Tiling sparse24_tiling() {
  Sparse24Tiling t;
  t.rows_max_m = INT64_MAX;  // no packed path
  t.rows_mt = 16;
  t.rows_nb = 64;
  return t;
}

size_t s24_rows_prep_bytes(int64_t M, int64_t K) { return static_cast<size_t>(M * prep_row_floats(K) * 4); }

void s24_rows_prep(const Sparse24LinearArgs& a, void* prep, int64_t m0, int64_t m1) {
  const int64_t rf = prep_row_floats(a.K);
  for (int64_t m = m0; m < m1; ++m) {
    float* dst = static_cast<float*>(prep) + m * rf;
    if (a.dtype == kFloat32) s24_x_row_to_f32<kFloat32>(a, m, dst);
    else s24_x_row_to_f32<kBFloat16>(a, m, dst);
  }
}

void s24_rows(const Sparse24LinearArgs& a, const void* prep, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const float* p = static_cast<const float*>(prep);
  const bool f32 = a.dtype == kFloat32;
  switch (a.values_dtype) {
    case kFloat32: rows_t<kFloat32, kFloat32>(a, p, m0, m1, n0, n1); break;
    case kBFloat16: rows_t<kBFloat16, kBFloat16>(a, p, m0, m1, n0, n1); break;
    default:
      f32 ? rows_t<kFloat32, kInt8>(a, p, m0, m1, n0, n1) : rows_t<kBFloat16, kInt8>(a, p, m0, m1, n0, n1);
      break;
  }
}

}  // namespace tforge::cpu::scalar
