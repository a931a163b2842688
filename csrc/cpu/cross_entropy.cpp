// Checked CPU entry points for cross-entropy: validate the arguments (targets included, before
// anything is written), pick the ISA kernel set and split the rows over OpenMP threads.
#include "cpu/cross_entropy.h"

#include <omp.h>

#include <algorithm>

#include "common/cpu_features.h"
#include "common/dtype.h"
#include "cpu/workspace.h"

namespace tforge::cpu {
namespace {

constexpr unsigned kCpuDtypes = (1u << kFloat32) | (1u << kBFloat16);

// Threads worth waking: about 32K elements each (a row's two passes cost ~1 us per 4K), at most one per row.
constexpr double kRowGrain = 32768;

template <class F>
void run_rows(const CrossEntropyArgs& a, int threads, F&& rows_fn) {
  TF_CHECK_ARG(threads >= 1, "threads must be >= 1, got ", threads);
  const int nt = scratch::pick_threads(threads, static_cast<double>(a.rows) * a.cols, kRowGrain, a.rows);
#pragma omp parallel num_threads(nt)
  {
    int64_t begin, end;
    scratch::row_range(a.rows, omp_get_thread_num(), omp_get_num_threads(), &begin, &end);
    rows_fn(begin, end);
  }
}

}  // namespace

void cross_entropy_fwd(const CrossEntropyArgs& a, int threads) {
  const char* op = "cross_entropy_fwd_cpu";
  a.check(op, false, kCpuDtypes);
  if (a.rows == 0) return;
  a.check_targets(op);
  const bool avx2 = cpu_has_avx2_fma();
  run_rows(a, threads, [&](int64_t r0, int64_t r1) {
#if defined(TFORGE_HAVE_X86)
    if (avx2) return avx2::cross_entropy_fwd_rows(a, r0, r1);
#endif
    scalar::cross_entropy_fwd_rows(a, r0, r1);
  });
  (void)avx2;
}

void cross_entropy_bwd(const CrossEntropyArgs& a, int threads) {
  const char* op = "cross_entropy_bwd_cpu";
  a.check(op, true, kCpuDtypes);
  if (a.rows == 0) return;
  a.check_targets(op);
  const bool avx2 = cpu_has_avx2_fma();
  run_rows(a, threads, [&](int64_t r0, int64_t r1) {
#if defined(TFORGE_HAVE_X86)
    if (avx2) return avx2::cross_entropy_bwd_rows(a, r0, r1);
#endif
    scalar::cross_entropy_bwd_rows(a, r0, r1);
  });
  (void)avx2;
}

}  // namespace tforge::cpu
