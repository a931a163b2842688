// Checked CPU entry points for cross-entropy: validate the arguments (targets included, before
// anything is written), pick the ISA kernel set and split the rows over OpenMP threads.
#include "cpu/cross_entropy.h"

#include <omp.h>

#include <algorithm>

#include "common/cpu_features.h"
#include "common/dtype.h"

namespace tforge::cpu {
namespace {

constexpr unsigned kCpuDtypes = (1u << kFloat32) | (1u << kBFloat16);

// Threads worth waking: about 32K elements each (a row's two passes cost ~1 us per 4K), at most one per row.
int pick_threads(int threads, int64_t rows, int64_t cols) {
  TF_CHECK_ARG(threads >= 1, "threads must be >= 1, got ", threads);
  const int64_t by_work = std::max<int64_t>(1, rows * cols / 32768);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({threads, by_work, rows})));
}

template <class F>
void run_rows(const CrossEntropyArgs& a, int threads, F&& rows_fn) {
  const int nt = pick_threads(threads, a.rows, a.cols);
#pragma omp parallel num_threads(nt)
  {
    // Contiguous blocks of rows: each thread streams its own part of logits and grad.
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t per = a.rows / n, extra = a.rows % n;
    const int64_t begin = t * per + std::min<int64_t>(t, extra);
    rows_fn(begin, begin + per + (t < extra ? 1 : 0));
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
