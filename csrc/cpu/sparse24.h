// CPU 2:4 sparse kernels: y = x @ W^T from the packed 2:4 form (values + meta
// nibbles, see common/sparse24_args.h), doing only the kept multiply-adds, and
// the N:M mask of a score matrix.
// sparse24.cpp checks arguments, picks the ISA, packs x and spreads the work
// over OpenMP threads (it also holds nm_mask, a scalar loop); sparse24_<isa>.cpp
// hold the linear kernels (shared scalar helpers in sparse24_kernels.h).
//
// Two paths for sparse24_linear:
//   packed (M > Sparse24Tiling::rows_max_m): x is transposed once per call into
//     K-major panels xT[k][mb] (mb rows of x, zero padded); a task (a range of
//     panels x a block of output columns) walks K in blocks and, for every kept
//     weight (n, k) named by the meta nibbles, adds broadcast(value) * xT[k] to
//     the mb accumulators of column n: one contiguous load per vector of mb rows,
//     no wasted multiply-adds.
//   rows (small M; every M on the scalar ISA): x rows are converted once, then
//     each column's kept x values are picked per group of 4 (AVX2: vpermilps on
//     the 4 x values of the group, indices straight from the meta nibbles).
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/sparse24_args.h"

namespace tforge::cpu {

// How an ISA's kernels block the problem.
struct Sparse24Tiling {
  int64_t mb = 0;          // rows of x per packed panel (0: no packed path)
  int64_t nb = 0;          // packed path: output columns per task
  int64_t mc = 0;          // packed path: rows per task (a multiple of mb)
  int64_t rows_max_m = 0;  // M <= rows_max_m: row kernel
  int64_t rows_mt = 0;     // row kernel: rows per task
  int64_t rows_nb = 0;     // row kernel: columns per task
};

// Per-ISA kernels (scalar and avx2 namespaces).
#define TFORGE_SPARSE24_ISA_DECLS                                                                           \
  Sparse24Tiling sparse24_tiling();                                                                         \
  /* Row kernel: s24_rows_prep converts rows [m0, m1) of x into prep (s24_rows_prep_bytes(M, K) bytes    \
     for all M rows, 64-byte aligned); s24_rows then writes output rows [m0, m1) x columns [n0, n1) of y. */ \
  size_t s24_rows_prep_bytes(int64_t M, int64_t K);                                                         \
  void s24_rows_prep(const Sparse24LinearArgs& a, void* prep, int64_t m0, int64_t m1);                      \
  void s24_rows(const Sparse24LinearArgs& a, const void* prep, int64_t m0, int64_t m1, int64_t n0, int64_t n1);

// Packed path (ISAs whose sparse24_tiling().mb > 0). A panel holds K * mb floats.
#define TFORGE_SPARSE24_PACKED_DECLS                                                                        \
  /* Rows [p * mb, p * mb + mb) of x (those past M are zero), K-major: dst[k * mb + i] = x[p * mb + i, k]. */ \
  void s24_pack_x(const Sparse24LinearArgs& a, int64_t p, float* dst);                                     \
  /* Per-thread scratch of one task (64-byte aligned). */                                                  \
  size_t s24_task_bytes(int64_t K);                                                                         \
  /* Output rows of panels [p0, p1) (clipped to M) x columns [n0, n1) (n1 - n0 <= nb, p1 - p0 <= mc / mb);   \
     xp: all panels, panel p at xp + p * K * mb. */                                                         \
  void s24_task(const Sparse24LinearArgs& a, const float* xp, int64_t p0, int64_t p1, int64_t n0, int64_t n1,  \
                void* scratch);

namespace scalar {
TFORGE_SPARSE24_ISA_DECLS
}  // namespace scalar
namespace avx2 {
TFORGE_SPARSE24_ISA_DECLS
TFORGE_SPARSE24_PACKED_DECLS
}  // namespace avx2
#undef TFORGE_SPARSE24_ISA_DECLS
#undef TFORGE_SPARSE24_PACKED_DECLS

// Name of the sparse24_linear kernel set chosen at run time: "avx2" or "scalar"
// (TFORGE_CPU_ISA=scalar forces scalar).
const char* sparse24_kernel_isa();

// Checked entry points; run on `threads` OpenMP threads.
void sparse24_linear(const Sparse24LinearArgs& a, int threads);
void nm_mask(const NMMaskArgs& a, int threads);

}  // namespace tforge::cpu
