// Checked CPU entry points for the 2:4 kernels: validate arguments, pick the
// ISA kernel set, pack x and spread the work over OpenMP threads; and nm_mask,
// a scalar loop over rows (rank of each score in its group; it is cheap next to
// anything that produced the scores).
//   sparse24_linear, packed path: all x panels are packed once, in parallel,
//     into a workspace kept by the calling thread; then one task per (panels x
//     column block) of y, dynamic schedule, each with a thread-private scratch.
//   sparse24_linear, row kernel (small M, the scalar ISA): x rows converted
//     once, then one task per (rows_mt rows x rows_nb columns).
// Results do not depend on the thread count (each output is summed by one
// thread in a fixed order).
#include "cpu/sparse24.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "common/checks.h"
#include "common/cpu_features.h"
#include "common/dtype.h"
#include "cpu/workspace.h"

namespace tforge::cpu {
namespace {

using scratch::ceil_div;
using scratch::pick_threads;
using scratch::round_up;
using scratch::thread_workspace;
using scratch::TrimOnExit;
using scratch::Workspace;

// Multiply-adds per thread, at least (tens of microseconds).
constexpr double kLinearGrain = 1 << 19;

struct Kernels {
  Sparse24Tiling t;
  decltype(&scalar::s24_rows_prep_bytes) rows_prep_bytes;
  decltype(&scalar::s24_rows_prep) rows_prep;
  decltype(&scalar::s24_rows) rows;
  decltype(&avx2::s24_pack_x) pack_x = nullptr;  // packed path (null for scalar)
  decltype(&avx2::s24_task_bytes) task_bytes = nullptr;
  decltype(&avx2::s24_task) task = nullptr;
};

enum class Isa { kScalar, kAvx2 };

// TFORGE_CPU_ISA=scalar forces the portable kernels (cpu_has_avx2_fma says no).
Isa pick_isa() { return cpu_has_avx2_fma() ? Isa::kAvx2 : Isa::kScalar; }

const Kernels& kernels(Isa isa) {
  static const Kernels k_scalar{scalar::sparse24_tiling(), &scalar::s24_rows_prep_bytes, &scalar::s24_rows_prep,
                                &scalar::s24_rows};
#if defined(TFORGE_HAVE_X86)
  static const Kernels k_avx2{avx2::sparse24_tiling(), &avx2::s24_rows_prep_bytes, &avx2::s24_rows_prep,
                              &avx2::s24_rows,           &avx2::s24_pack_x,           &avx2::s24_task_bytes,
                              &avx2::s24_task};
  if (isa == Isa::kAvx2) return k_avx2;
#endif
  (void)isa;
  return k_scalar;
}

void linear_rows(const Sparse24LinearArgs& a, const Kernels& k, int threads) {
  Workspace& ws = thread_workspace();
  TrimOnExit trim{ws};
  void* prep = ws.get(k.rows_prep_bytes(a.M, a.K));
  const int64_t mt = k.t.rows_mt, nb = k.t.rows_nb;
  const int64_t tn = ceil_div(a.N, nb), tasks = ceil_div(a.M, mt) * tn;
  const int nt = pick_threads(threads, static_cast<double>(a.M) * a.N * a.K / 2, kLinearGrain, tasks);
  // The rows of x are few (M <= rows_max_m on the vector ISAs) and converting them is
  // cheap next to reading the weight: done here, it saves a barrier.
  k.rows_prep(a, prep, 0, a.M);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t m0 = t / tn * mt, n0 = t % tn * nb;
    k.rows(a, prep, m0, std::min(a.M, m0 + mt), n0, std::min(a.N, n0 + nb));
  }
}

void linear_packed(const Sparse24LinearArgs& a, const Kernels& k, int threads) {
  const Sparse24Tiling& T = k.t;
  const int64_t P = ceil_div(a.M, T.mb);
  // Panels per task: at most mc / mb, spread evenly (21 panels -> 11 + 10, not 12 + 9).
  const int64_t pmax = T.mc / T.mb, ptasks = ceil_div(P, pmax), pc = ceil_div(P, ptasks);
  // Column blocks: nb, or narrower (even) when that leaves threads idle.
  int64_t nb = T.nb;
  while (nb > 8 && ceil_div(P, pc) * ceil_div(a.N, nb) < 4 * threads) nb = round_up(nb / 2, 2);
  const int64_t tn = ceil_div(a.N, nb), tasks = ceil_div(P, pc) * tn;
  const int nt = pick_threads(threads, static_cast<double>(a.M) * a.N * a.K / 2, kLinearGrain, tasks);

  const size_t panel_bytes = static_cast<size_t>(a.K * T.mb) * sizeof(float);
  const size_t task_bytes = static_cast<size_t>(round_up(static_cast<int64_t>(k.task_bytes(a.K)), 64));
  Workspace& ws = thread_workspace();
  TrimOnExit trim{ws};
  char* base = static_cast<char*>(ws.get(P * panel_bytes + nt * task_bytes));
  float* xp = reinterpret_cast<float*>(base);
  char* scratch = base + P * panel_bytes;
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t p = 0; p < P; ++p) k.pack_x(a, p, reinterpret_cast<float*>(base + p * panel_bytes));
    void* mine = scratch + omp_get_thread_num() * task_bytes;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t p0 = t / tn * pc, n0 = t % tn * nb;
      k.task(a, xp, p0, std::min(P, p0 + pc), n0, std::min(a.N, n0 + nb), mine);
    }
  }
}

// K == 0: y = bias (times nothing), or 0.
void linear_empty_k(const Sparse24LinearArgs& a) {
  for (int64_t m = 0; m < a.M; ++m)
    for (int64_t n = 0; n < a.N; ++n) {
      const float v = a.bias ? a.bias[n] : 0.f;
      if (a.dtype == kFloat32) static_cast<float*>(a.y)[m * a.y_stride + n] = v;
      else static_cast<uint16_t*>(a.y)[m * a.y_stride + n] = float_to_bf16(v);
    }
}

// ---- nm_mask

template <int DT>
inline float score_at(const void* row, int64_t i) {
  if constexpr (DT == kFloat32) return static_cast<const float*>(row)[i];
  else if constexpr (DT == kBFloat16) return bf16_to_float(static_cast<const uint16_t*>(row)[i]);
  else return half_to_float(static_cast<const uint16_t*>(row)[i]);
}

// Rows [r0, r1): in each group of m, element i is kept when fewer than n elements
// beat it, where j beats i if s[j] > s[i], or s[j] == s[i] and j < i.
template <int DT>
void nm_mask_rows(const NMMaskArgs& a, int64_t r0, int64_t r1) {
  const size_t esize = DT == kFloat32 ? 4 : 2;
  const int m = a.m, n = a.n;
  float s[16];
  for (int64_t r = r0; r < r1; ++r) {
    const void* row = static_cast<const char*>(a.scores) + static_cast<size_t>(r * a.s_stride) * esize;
    uint8_t* out = a.mask + r * a.cols;
    for (int64_t c0 = 0; c0 < a.cols; c0 += m) {
      for (int i = 0; i < m; ++i) s[i] = score_at<DT>(row, c0 + i);
      for (int i = 0; i < m; ++i) {
        int beaten = 0;
        for (int j = 0; j < m; ++j) beaten += (s[j] > s[i]) | ((s[j] == s[i]) & (j < i));
        out[c0 + i] = beaten < n ? 1 : 0;
      }
    }
  }
}

}  // namespace

const char* sparse24_kernel_isa() {
  switch (pick_isa()) {
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

void sparse24_linear(const Sparse24LinearArgs& a, int threads) {
  const char* op = "sparse24_linear_cpu";
  TF_CHECK_ARG(threads >= 1, op, ": threads must be >= 1, got ", threads);
  TF_CHECK_ARG(a.M >= 0 && a.N >= 0 && a.K >= 0, op, ": sizes must be >= 0, got M ", a.M, ", N ", a.N, ", K ", a.K);
  TF_CHECK_ARG(a.K % 4 == 0, op, ": K must be a multiple of 4 (groups of 4 columns), got ", a.K);
  TF_CHECK_ARG(a.dtype == kFloat32 || a.dtype == kBFloat16, op,
               ": x and y must be float32 or bfloat16 on the CPU, got dtype code ", a.dtype, " (",
               dtype_name(a.dtype), ")");
  TF_CHECK_ARG(a.values_dtype == a.dtype || a.values_dtype == kInt8, op, ": values dtype code ", a.values_dtype,
               " must equal the x dtype code ", a.dtype, " or be int8 (", kInt8, ")");
  if (a.values_dtype == kInt8)
    TF_CHECK_ARG(a.scale != nullptr, op, ": int8 values need a per-row scale, got a null scale pointer");
  else
    TF_CHECK_ARG(a.scale == nullptr, op, ": scale is only for int8 values, got one with values dtype ",
                 dtype_name(a.values_dtype));
  if (a.M == 0 || a.N == 0) return;
  TF_CHECK_ARG(a.y != nullptr, op, ": y is a null pointer");
  TF_CHECK_ARG(a.y_stride >= a.N, op, ": y row stride ", a.y_stride, " is smaller than N = ", a.N);
  if (a.K == 0) {
    linear_empty_k(a);
    return;
  }
  TF_CHECK_ARG(a.x != nullptr, op, ": x is a null pointer");
  TF_CHECK_ARG(a.values != nullptr, op, ": values is a null pointer");
  TF_CHECK_ARG(a.meta != nullptr, op, ": meta is a null pointer");
  TF_CHECK_ARG(a.x_stride >= a.K, op, ": x row stride ", a.x_stride, " is smaller than K = ", a.K);

  const Kernels& k = kernels(pick_isa());
  if (k.t.mb > 0 && a.M > k.t.rows_max_m) linear_packed(a, k, threads);
  else linear_rows(a, k, threads);
}

void nm_mask(const NMMaskArgs& a, int threads) {
  const char* op = "nm_mask_cpu";
  TF_CHECK_ARG(threads >= 1, op, ": threads must be >= 1, got ", threads);
  TF_CHECK_ARG(a.m >= 1 && a.m <= 16, op, ": m must be in [1, 16], got ", a.m);
  TF_CHECK_ARG(a.n >= 1 && a.n <= a.m, op, ": n must be in [1, m = ", a.m, "], got ", a.n);
  TF_CHECK_ARG(a.rows >= 0 && a.cols >= 0, op, ": sizes must be >= 0, got rows ", a.rows, ", cols ", a.cols);
  TF_CHECK_ARG(a.cols % a.m == 0, op, ": cols = ", a.cols, " must be a multiple of m = ", a.m);
  TF_CHECK_ARG(a.dtype == kFloat32 || a.dtype == kBFloat16 || a.dtype == kFloat16, op,
               ": scores must be float32, bfloat16 or float16, got dtype code ", a.dtype);
  if (a.rows == 0 || a.cols == 0) return;
  TF_CHECK_ARG(a.scores != nullptr, op, ": scores is a null pointer");
  TF_CHECK_ARG(a.mask != nullptr, op, ": mask is a null pointer");
  TF_CHECK_ARG(a.s_stride >= a.cols, op, ": scores row stride ", a.s_stride, " is smaller than cols = ", a.cols);

  const int nt = pick_threads(threads, static_cast<double>(a.rows) * a.cols * a.m, 1 << 18, a.rows);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < a.rows; ++r) {
    switch (a.dtype) {
      case kFloat32: nm_mask_rows<kFloat32>(a, r, r + 1); break;
      case kBFloat16: nm_mask_rows<kBFloat16>(a, r, r + 1); break;
      default: nm_mask_rows<kFloat16>(a, r, r + 1); break;
    }
  }
}

}  // namespace tforge::cpu
