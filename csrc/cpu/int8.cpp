// Checked CPU entry points for the int8 kernels: validate arguments, pick the
// ISA kernel set, pack the operands and spread the work over OpenMP threads.
//   GEMM, packed path: B (the weight) and A are packed once per call, in
//     parallel, into panels of a workspace kept by the calling thread; then one
//     task per (mc x nc) block of C (dynamic schedule), each accumulating over
//     K blocks in a thread-private int32 block and storing it through the
//     epilogue.
//   GEMM, row kernel (small M, K == 0, the scalar ISA): the rows of A are
//     converted once, then one task per block of kInt8RowsMT rows x rows_nb
//     columns of C (for small M: a split over N).
//   quantize_rows: contiguous blocks of rows per thread.
// Results do not depend on the thread count (exact integer sums, elementwise
// epilogue).
#include "cpu/int8.h"

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

// The AVX-512 VNNI kernels (int8_avx512vnni.cpp) are built on x86 alongside the AVX2
// ones; define TFORGE_NO_AVX512VNNI to leave them out (a compiler without -mavx512vnni).
#if defined(TFORGE_HAVE_X86) && !defined(TFORGE_NO_AVX512VNNI)
#define TFORGE_INT8_VNNI 1
#endif

enum class Isa { kScalar, kAvx2, kAvx512Vnni };

// __builtin_cpu_supports also checks that the OS saves the AVX-512 state (XCR0).
bool cpu_has_avx512vnni() {
#if defined(TFORGE_INT8_VNNI)
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return has;
#else
  return false;
#endif
}

// TFORGE_CPU_ISA: "scalar" forces the portable kernels (cpu_has_avx2_fma says no),
// "avx2" caps the choice at AVX2; anything else (or unset) takes the best the CPU has.
Isa pick_isa() {
  if (!cpu_has_avx2_fma()) return Isa::kScalar;  // also TFORGE_CPU_ISA=scalar
  const char* force = std::getenv("TFORGE_CPU_ISA");
  if (force && std::strcmp(force, "avx2") == 0) return Isa::kAvx2;
  return cpu_has_avx512vnni() ? Isa::kAvx512Vnni : Isa::kAvx2;
}

// One ISA's kernels.
struct Kernels {
  Int8Tiling t;
  decltype(&scalar::int8_store) store;
  decltype(&scalar::int8_rows_prep_bytes) rows_prep_bytes;
  decltype(&scalar::int8_rows_prep) rows_prep;
  decltype(&scalar::int8_rows_gemm) rows_gemm;
  decltype(&scalar::quantize_rows_range) quantize;
  // packed path (null for the scalar ISA)
  decltype(&avx2::int8_pack_a) pack_a = nullptr;
  decltype(&avx2::int8_pack_b) pack_b = nullptr;
  decltype(&avx2::int8_tile) tile = nullptr;
};

#define TF_INT8_COMMON(ns) \
  ns::int8_tiling(), &ns::int8_store, &ns::int8_rows_prep_bytes, &ns::int8_rows_prep, &ns::int8_rows_gemm, \
      &ns::quantize_rows_range

const Kernels& kernels(Isa isa) {
  static const Kernels k_scalar{TF_INT8_COMMON(scalar)};
#if defined(TFORGE_HAVE_X86)
  static const Kernels k_avx2{TF_INT8_COMMON(avx2), &avx2::int8_pack_a, &avx2::int8_pack_b, &avx2::int8_tile};
  if (isa == Isa::kAvx2) return k_avx2;
#endif
#if defined(TFORGE_INT8_VNNI)
  static const Kernels k_vnni{TF_INT8_COMMON(avx512vnni), &avx512vnni::int8_pack_a, &avx512vnni::int8_pack_b,
                              &avx512vnni::int8_tile};
  if (isa == Isa::kAvx512Vnni) return k_vnni;
#endif
  (void)isa;
  return k_scalar;
}
#undef TF_INT8_COMMON

using scratch::ceil_div;
using scratch::pick_threads;
using scratch::round_up;
using scratch::thread_workspace;
using scratch::TrimOnExit;
using scratch::Workspace;

// Multiply-adds per thread, at least (about 5-20 us of kernel time): M = 1 decode shapes
// such as 4096 x 4096 still use every thread, as the brief asks of small M.
constexpr double kGemmGrain = 1 << 20;

void gemm_rows(const Int8GemmArgs& a, const Kernels& k, int threads) {
  Workspace& ws = thread_workspace();
  TrimOnExit trim{ws};
  void* prep = ws.get(k.rows_prep_bytes(a.M, a.K));
  k.rows_prep(a, prep);
  const int64_t nb = k.t.rows_nb, mt = kInt8RowsMT;
  const int64_t tn = ceil_div(a.N, nb), tasks = ceil_div(a.M, mt) * tn;
  const int nt = pick_threads(threads, static_cast<double>(a.M) * a.N * std::max<int64_t>(a.K, 16), kGemmGrain, tasks);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t m0 = t / tn * mt, n0 = t % tn * nb;
    k.rows_gemm(a, prep, m0, std::min(a.M, m0 + mt), n0, std::min(a.N, n0 + nb));
  }
}

void gemm_packed(const Int8GemmArgs& a, const Kernels& k, int threads) {
  const Int8Tiling& T = k.t;
  const int64_t M = a.M, N = a.N, K = a.K;
  const int64_t Kp = round_up(K, T.ku);
  const int64_t pa = ceil_div(M, T.mr), pb = ceil_div(N, T.nr);
  const int64_t a_panel = round_up(Kp * T.mr * T.a_elem, 64), b_panel = round_up(Kp * T.nr * T.b_elem, 64);
  const int64_t mc = std::min(T.mc, pa * T.mr), nc = std::min(T.nc, pb * T.nr);
  const int64_t tm = ceil_div(M, mc), tn = ceil_div(N, nc), tasks = tm * tn;
  const int nt = pick_threads(threads, static_cast<double>(M) * N * K, kGemmGrain, tasks);
  const int64_t c_block = round_up(mc * nc * 4, 64);

  Workspace& ws = thread_workspace();
  TrimOnExit trim{ws};
  const int64_t corr_bytes = T.row_corr ? round_up(pa * T.mr * 4, 64) : 0;
  char* base = static_cast<char*>(ws.get(static_cast<size_t>(pa * a_panel + pb * b_panel + corr_bytes + nt * c_block)));
  char* A = base;
  char* B = A + pa * a_panel;
  int32_t* corr = T.row_corr ? reinterpret_cast<int32_t*>(B + pb * b_panel) : nullptr;
  char* cbufs = B + pb * b_panel + corr_bytes;

#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static) nowait
    for (int64_t j = 0; j < pb; ++j)
      k.pack_b(a.b + j * T.nr * a.b_stride, a.b_stride, std::min<int64_t>(T.nr, N - j * T.nr), K, B + j * b_panel);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < pa; ++i)
      k.pack_a(a.a + i * T.mr * a.a_stride, a.a_stride, std::min<int64_t>(T.mr, M - i * T.mr), K, A + i * a_panel,
               corr ? corr + i * T.mr : nullptr);
    int32_t* cb = reinterpret_cast<int32_t*>(cbufs + omp_get_thread_num() * c_block);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t m0 = t / tn * mc, n0 = t % tn * nc;
      const int64_t rows = std::min(mc, M - m0), cols = std::min(nc, N - n0);
      const int64_t ip = ceil_div(rows, T.mr), jp = ceil_div(cols, T.nr);
      const char* Ab = A + m0 / T.mr * a_panel;
      const char* Bb = B + n0 / T.nr * b_panel;
      for (int64_t k0 = 0; k0 < Kp; k0 += T.kc) {
        const int64_t kc = std::min(T.kc, Kp - k0);
        for (int64_t jj = 0; jj < jp; ++jj) {
          const char* bp = Bb + jj * b_panel + k0 * T.nr * T.b_elem;
          for (int64_t ii = 0; ii < ip; ++ii)
            k.tile(Ab + ii * a_panel + k0 * T.mr * T.a_elem, bp, kc, cb + ii * T.mr * nc + jj * T.nr, nc, k0 > 0);
        }
      }
      k.store(a, cb, nc, m0, rows, n0, cols, corr ? corr + m0 : nullptr);
    }
  }
}

}  // namespace

const char* int8_kernel_isa() {
  switch (pick_isa()) {
    case Isa::kAvx512Vnni: return "avx512vnni";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

void int8_gemm(const Int8GemmArgs& a, int threads) {
  const char* op = "int8_gemm_cpu";
  TF_CHECK_ARG(threads >= 1, op, ": threads must be >= 1, got ", threads);
  TF_CHECK_ARG(a.M >= 0 && a.N >= 0 && a.K >= 0, op, ": sizes must be >= 0, got M ", a.M, ", N ", a.N, ", K ", a.K);
  TF_CHECK_ARG(a.K <= kInt8MaxK, op, ": K = ", a.K, " exceeds ", kInt8MaxK,
               ", beyond which int32 accumulation may overflow");
  // A row stride is only used between rows: a single row may have any.
  TF_CHECK_ARG(a.M <= 1 || a.a_stride >= a.K, op, ": a row stride ", a.a_stride, " is smaller than K = ", a.K);
  TF_CHECK_ARG(a.N <= 1 || a.b_stride >= a.K, op, ": b row stride ", a.b_stride, " is smaller than K = ", a.K);
  if (a.K > 0) {
    TF_CHECK_ARG(a.M == 0 || a.a != nullptr, op, ": a is a null pointer");
    TF_CHECK_ARG(a.N == 0 || a.b != nullptr, op, ": b is a null pointer");
  }
  // An empty output needs nothing more (an empty tensor's data pointer may be null, so
  // c_i32 == null does not tell the two forms apart there).
  if (a.M == 0 || a.N == 0) return;
  if (!a.c_i32) {  // fused dequantising epilogue
    TF_CHECK_ARG(a.c != nullptr, op, ": no output: c_i32 and c are both null pointers");
    TF_CHECK_ARG(a.out_dtype == kFloat32 || a.out_dtype == kBFloat16 || a.out_dtype == kFloat16, op,
                 ": out_dtype must be float32, bfloat16 or float16, got code ", a.out_dtype);
    TF_CHECK_ARG(a.b_scale != nullptr, op, ": b_scale is required for a dequantised output");
  }

  const Kernels& k = kernels(pick_isa());
  if (k.t.mr == 0 || a.K == 0 || a.M <= k.t.rows_max_m) gemm_rows(a, k, threads);
  else gemm_packed(a, k, threads);
}

void quantize_rows(const QuantizeRowsArgs& a, int threads) {
  const char* op = "quantize_rows_cpu";
  TF_CHECK_ARG(threads >= 1, op, ": threads must be >= 1, got ", threads);
  TF_CHECK_ARG(a.rows >= 0, op, ": rows must be >= 0, got ", a.rows);
  TF_CHECK_ARG(a.cols >= 1, op, ": the quantised (last) dimension must be >= 1, got ", a.cols);
  TF_CHECK_ARG(a.dtype == kFloat32 || a.dtype == kBFloat16 || a.dtype == kFloat16, op,
               ": x must be float32, bfloat16 or float16, got code ", a.dtype);
  if (a.rows == 0) return;
  TF_CHECK_ARG(a.x != nullptr, op, ": x is a null pointer");
  TF_CHECK_ARG(a.rows <= 1 || a.x_stride >= a.cols, op, ": x row stride ", a.x_stride,
               " is smaller than the row length ", a.cols);
  TF_CHECK_ARG(a.q != nullptr, op, ": q is a null pointer");
  TF_CHECK_ARG(a.scale != nullptr, op, ": scale is a null pointer");

  const Kernels& k = kernels(pick_isa());
  const int nt = pick_threads(threads, static_cast<double>(a.rows) * a.cols, 16384, a.rows);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t per = a.rows / n, extra = a.rows % n;
    const int64_t begin = t * per + std::min<int64_t>(t, extra);
    const int64_t end = begin + per + (t < extra ? 1 : 0);
    k.quantize(a, begin, end);
  }
}

}  // namespace tforge::cpu
