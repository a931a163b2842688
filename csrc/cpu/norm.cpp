// Checked CPU entry points for LayerNorm / RMSNorm: validate arguments, pick
// the ISA kernel set, split rows over OpenMP threads and reduce the per-thread
// dweight / dbias partials.
#include "cpu/norm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/checks.h"
#include "common/cpu_features.h"
#include "common/dtype.h"
#include "cpu/workspace.h"

namespace tforge::cpu {
namespace {

void check_common(int64_t rows, int64_t cols, int dtype, const char* op) {
  TF_CHECK_ARG(rows >= 0, op, ": rows must be >= 0, got ", rows);
  TF_CHECK_ARG(cols >= 1, op, ": the normalised (last) dimension must be >= 1, got ", cols);
  TF_CHECK_ARG(dtype == kFloat32 || dtype == kBFloat16, op, ": CPU kernels take float32 or bfloat16, got ",
               dtype_name(dtype));
}

void check_rows(const void* p, int64_t stride, int64_t rows, int64_t cols, const char* op, const char* name) {
  if (rows == 0) return;
  TF_CHECK_ARG(p != nullptr, op, ": ", name, " is a null pointer");
  TF_CHECK_ARG(stride >= cols, op, ": ", name, " row stride ", stride, " is smaller than the row length ", cols);
}

// Threads worth using (scratch::pick_threads): about 16K elements per thread or more, never more than rows.
constexpr double kRowGrain = 16384;

}  // namespace

void norm_fwd(const NormFwdArgs& a, int threads) {
  const char* op = a.rms ? "rms_norm_fwd_cpu" : "layer_norm_fwd_cpu";
  TF_CHECK_ARG(threads >= 1, op, ": threads must be >= 1, got ", threads);
  check_common(a.rows, a.cols, a.dtype, op);
  TF_CHECK_ARG(std::isfinite(a.eps) && a.eps > 0.f, op, ": eps must be a positive finite number, got ", a.eps);
  TF_CHECK_ARG(!(a.rms && a.bias), op, ": RMSNorm takes no bias");
  if (a.rows == 0) return;
  check_rows(a.x, a.x_stride, a.rows, a.cols, op, "x");
  check_rows(a.y, a.cols, a.rows, a.cols, op, "y");
  TF_CHECK_ARG(a.rstd != nullptr, op, ": rstd is a null pointer");
  TF_CHECK_ARG(a.rms || a.mean != nullptr, op, ": mean is a null pointer");
  if (a.residual) {
    check_rows(a.residual, a.residual_stride, a.rows, a.cols, op, "residual");
    TF_CHECK_ARG(a.residual_out != nullptr, op, ": residual given but residual_out is a null pointer");
  }

  const bool avx2 = cpu_has_avx2_fma();
  const int nt = scratch::pick_threads(threads, static_cast<double>(a.rows) * a.cols, kRowGrain, a.rows);
#pragma omp parallel num_threads(nt)
  {
    int64_t begin, end;
    scratch::row_range(a.rows, omp_get_thread_num(), omp_get_num_threads(), &begin, &end);
#if defined(TFORGE_HAVE_X86)
    if (avx2) avx2::norm_fwd_rows(a, begin, end);
    else
#endif
      scalar::norm_fwd_rows(a, begin, end);
  }
  (void)avx2;
}

void norm_bwd(const NormBwdArgs& a, int threads) {
  const char* op = a.rms ? "rms_norm_bwd_cpu" : "layer_norm_bwd_cpu";
  TF_CHECK_ARG(threads >= 1, op, ": threads must be >= 1, got ", threads);
  check_common(a.rows, a.cols, a.dtype, op);
  TF_CHECK_ARG(!(a.rms && a.dbias), op, ": RMSNorm has no bias gradient");
  TF_CHECK_ARG(!a.dweight || a.weight, op, ": dweight requested without weight");
  const int64_t n = a.cols;
  if (a.rows > 0) {
    check_rows(a.dy, a.dy_stride, a.rows, n, op, "dy");
    check_rows(a.x, a.x_stride, a.rows, n, op, "x");
    check_rows(a.dx, n, a.rows, n, op, "dx");
    if (a.dresidual_out) check_rows(a.dresidual_out, a.dres_stride, a.rows, n, op, "dresidual_out");
    TF_CHECK_ARG(a.rstd != nullptr, op, ": rstd is a null pointer");
    TF_CHECK_ARG(a.rms || a.mean != nullptr, op, ": mean is a null pointer");
  }

  const bool avx2 = cpu_has_avx2_fma();
  const int nt = a.rows > 0 ? scratch::pick_threads(threads, static_cast<double>(a.rows) * n, kRowGrain, a.rows) : 1;
  const int nacc = (a.dweight ? 1 : 0) + (a.dbias ? 1 : 0);
  // One fp32 partial per thread and per gradient: deterministic for a given thread count.
  std::vector<float> partial(static_cast<size_t>(nt) * nacc * n, 0.f);
  if (a.rows > 0) {
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num();
      int64_t begin, end;
      scratch::row_range(a.rows, t, omp_get_num_threads(), &begin, &end);
      float* base = partial.data() + static_cast<size_t>(t) * nacc * n;
      float* dw_acc = a.dweight ? base : nullptr;
      float* db_acc = a.dbias ? base + (a.dweight ? n : 0) : nullptr;
#if defined(TFORGE_HAVE_X86)
      if (avx2) avx2::norm_bwd_rows(a, begin, end, dw_acc, db_acc);
      else
#endif
        scalar::norm_bwd_rows(a, begin, end, dw_acc, db_acc);
    }
  }
  (void)avx2;
  // Reduce partials in thread order and write in the parameters' dtype.
  for (int g = 0; g < nacc; ++g) {
    void* out = (g == 0 && a.dweight) ? a.dweight : a.dbias;
    for (int64_t i = 0; i < n; ++i) {
      float s = 0.f;
      for (int t = 0; t < nt; ++t) s += partial[(static_cast<size_t>(t) * nacc + g) * n + i];
      if (a.dtype == kFloat32) static_cast<float*>(out)[i] = s;
      else static_cast<uint16_t*>(out)[i] = float_to_bf16(s);
    }
  }
}

}  // namespace tforge::cpu
