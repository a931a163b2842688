// 2:4 sparse linear kernels built with -mavx2 -mfma -mf16c (see CMakeLists.txt);
// called only when CPUID reports AVX2+FMA+F16C.
//
// packed path: x is transposed once per call into panels xT[k][kMB] (kMB = 48
//   rows, 6 ymm per row of the panel). A task (up to kMCP panels x kNB columns)
//   walks K in blocks of kKC; for each panel and each pair of columns the
//   micro-kernel keeps 2 x 48 outputs in 12 ymm and, per kept weight (n, k),
//   adds broadcast(value) times the contiguous xT row k: 6 FMAs whose loads are
//   folded in. The rows come straight from the meta bytes (a 256-entry table
//   gives the 4 rows of a byte's two groups); fp32 values are broadcast from the
//   values tensor itself, bf16 / int8 ones from a per-block fp32 copy. Only kept
//   weights are multiplied; the xT block (24 KB) stays in L1 while the task's
//   columns stream past it, and the next block is prefetched meanwhile.
//   Measured on Zen 4 (one core, fp32, M = 512, N = 1024, K = 4096): about 36
//   GMAC/s of kept weights, 60% of the FMA peak; a load per FMA is the limit.
//   (An AVX-512 build of the same scheme measured the same, and was dropped.)
// row kernel (small M): per 16 values of k (4 groups, 8 kept values), the x row
//   is stored as [x0..3 x8..11 | x4..7 x12..15], so one vpermilps per half
//   picks the kept x values of two groups with the meta bits themselves as
//   indices (vpermilps reads the low 2 bits of each lane), one blend merges the
//   halves, and one FMA multiplies them by the 8 values. Shuffle-bound, but it
//   reads the weight once with nothing to set up: the choice for M <= 8.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/dtype.h"
#include "cpu/sparse24.h"

namespace tforge::cpu::avx2 {
#include "cpu/vec_one.h"
#include "cpu/vec_avx2.h"
#include "cpu/sparse24_kernels.h"

namespace {

constexpr int kVW = 8;         // floats per ymm
constexpr int kMB = 48;        // rows of x per panel (6 ymm)
constexpr int kNR = 2;         // columns per micro-tile: 12 ymm accumulators
constexpr int64_t kKC = 128;   // K block: the xT block is kMB * kKC * 4 = 24 KB (L1)
constexpr int64_t kNB = 64;    // columns per task
constexpr int64_t kMCP = 12;   // panels per task at most (576 rows; the C block is 152 KB, L2)

// ---- 8-wide helpers

// 8 consecutive x / values elements as fp32.
template <int DT>
inline __m256 load8(const void* p, int64_t i) {
  if constexpr (DT == kFloat32) {
    return _mm256_loadu_ps(static_cast<const float*>(p) + i);
  } else if constexpr (DT == kBFloat16) {
    return Vec::load(static_cast<const uint16_t*>(p) + i).v;
  } else {  // kInt8
    int64_t q;
    std::memcpy(&q, static_cast<const int8_t*>(p) + i, 8);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(q)));
  }
}

// Epilogue of 8 outputs of one row, columns [n, n + 8): acc * scale + bias, stored as DT.
template <int DT>
inline void store_out8(const Sparse24LinearArgs& a, void* yrow, int64_t n, __m256 v) {
  if (a.scale) v = _mm256_mul_ps(v, _mm256_loadu_ps(a.scale + n));
  if (a.bias) v = _mm256_add_ps(v, _mm256_loadu_ps(a.bias + n));
  if constexpr (DT == kFloat32) _mm256_storeu_ps(static_cast<float*>(yrow) + n, v);
  else Vec::store(static_cast<uint16_t*>(yrow) + n, Vec{v});
}

// ---- packed path

static_assert(kMB % kVW == 0 && kKC % 8 == 0 && kNB % kNR == 0, "packed-path tiling");

// Float offsets into an xT block of the 4 kept rows of a pair of groups, from their
// meta byte (low nibble: the even group, rows 0..3; high nibble: the odd group,
// rows 4..7): 4 x 16 bits, in slot order.
struct ByteOffsets {
  uint64_t t[256];
  constexpr ByteOffsets() : t() {
    for (uint64_t b = 0; b < 256; ++b) {
      const uint64_t lo = b & 15u, hi = b >> 4;
      t[b] = ((lo & 3u) * kMB) | ((lo >> 2) * kMB) << 16 | ((4 + (hi & 3u)) * kMB) << 32 |
             ((4 + (hi >> 2)) * kMB) << 48;
    }
  }
};
constexpr ByteOffsets kByteOffsets{};

// c[j * kMB + i] (=, or += unless FIRST) the products of ng groups (from the start of
// a K block, whose xT block is xt) of the kNR columns whose fp32 values and meta
// start at v[j] / m[j], for rows i < MV * kVW: per kept weight, broadcast(value) times
// a contiguous xT row, the load folded into the FMA. MV < kMB / kVW serves the last
// panel when M is not a multiple of kMB (its missing rows are not computed).
// Arrays of accumulators stay in registers when every loop over them is unrolled.
// Not inlined: inside the task loop GCC runs short of integer registers.
template <bool FIRST, int MV>
__attribute__((noinline)) void tile_kernel(const float* const* vp, const uint8_t* const* mp, int64_t ng,
                                           const float* xt, float* c) {
  __m256 acc[kNR][MV];
  const float* v[kNR];
  const uint8_t* m[kNR];
#pragma GCC unroll 16
  for (int j = 0; j < kNR; ++j) {
    v[j] = vp[j];
    m[j] = mp[j];
#pragma GCC unroll 16
    for (int u = 0; u < MV; ++u) acc[j][u] = FIRST ? _mm256_setzero_ps() : _mm256_load_ps(c + j * kMB + 8 * u);
  }
  auto madd = [&](int j, const float* vs, const float* x) {
    const __m256 b = _mm256_broadcast_ss(vs);
#pragma GCC unroll 16
    for (int u = 0; u < MV; ++u) acc[j][u] = _mm256_fmadd_ps(b, _mm256_load_ps(x + 8 * u), acc[j][u]);
  };
  // Pairs of groups: one meta byte per column. Columns alternate so that no
  // accumulator gets two FMAs in a row (each has 4 cycles of latency).
  const int64_t npairs = ng / 2;
  uint64_t o[kNR];
#pragma GCC unroll 16
  for (int j = 0; j < kNR; ++j) o[j] = npairs > 0 ? kByteOffsets.t[m[j][0]] : 0;
  // The offsets are loaded a pair ahead: the meta byte -> table -> FMA address chain
  // is long, and waiting on it left the FMA units idle (37 -> 40 GMAC/s in L1).
  for (int64_t gp = 0; gp < npairs; ++gp, xt += 8 * kMB) {
    uint64_t on[kNR];
#pragma GCC unroll 16
    for (int j = 0; j < kNR; ++j) on[j] = kByteOffsets.t[m[j][gp + 1 < npairs ? gp + 1 : gp]];
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t)
#pragma GCC unroll 16
      for (int j = 0; j < kNR; ++j) madd(j, v[j] + 4 * gp + t, xt + ((o[j] >> (16 * t)) & 0xffff));
#pragma GCC unroll 16
    for (int j = 0; j < kNR; ++j) o[j] = on[j];
  }
  if (ng & 1) {  // a last, odd group (K % 8 == 4): the low nibble
    const int64_t gp = ng / 2;
#pragma GCC unroll 16
    for (int j = 0; j < kNR; ++j) {
      const uint64_t o = kByteOffsets.t[m[j][gp] & 15u];
      madd(j, v[j] + 4 * gp, xt + (o & 0xffff));
      madd(j, v[j] + 4 * gp + 1, xt + ((o >> 16) & 0xffff));
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < kNR; ++j)
#pragma GCC unroll 16
    for (int u = 0; u < MV; ++u) _mm256_store_ps(c + j * kMB + 8 * u, acc[j][u]);
}

// tile_kernel<FIRST, mv> for a run-time mv in [1, kMB / kVW].
template <bool FIRST, int MV = kMB / kVW>
inline void tile_kernel_mv(int mv, const float* const* vp, const uint8_t* const* mp, int64_t ng, const float* xt,
                           float* c) {
  if constexpr (MV > 1) {
    if (mv < MV) return tile_kernel_mv<FIRST, MV - 1>(mv, vp, mp, ng, xt, c);
  }
  tile_kernel<FIRST, MV>(vp, mp, ng, xt, c);
}

// Rows of one panel out of its C block cp[n * kMB + i] (n < ncols) into y.
template <int DT>
void store_panel(const Sparse24LinearArgs& a, const float* cp, int64_t r0, int64_t rows, int64_t n0, int64_t ncols) {
  const size_t esize = s24_esize(DT);
  char* ybase = static_cast<char*>(a.y);
  int64_t i = 0;
  for (; i + 8 <= rows; i += 8) {
    int64_t n = 0;
    for (; n + 8 <= ncols; n += 8) {
      __m256 t[8];
      for (int u = 0; u < 8; ++u) t[u] = _mm256_load_ps(cp + (n + u) * kMB + i);
      transpose8(t);  // t[s] = row i + s, columns n .. n + 7
      for (int s = 0; s < 8; ++s)
        store_out8<DT>(a, ybase + static_cast<size_t>((r0 + i + s) * a.y_stride) * esize, n0 + n, t[s]);
    }
    for (; n < ncols; ++n)
      for (int s = 0; s < 8; ++s)
        s24_store<DT>(a.y, (r0 + i + s) * a.y_stride + n0 + n, s24_epilogue(a, n0 + n, cp[n * kMB + i + s]));
  }
  for (; i < rows; ++i)
    for (int64_t n = 0; n < ncols; ++n)
      s24_store<DT>(a.y, (r0 + i) * a.y_stride + n0 + n, s24_epilogue(a, n0 + n, cp[n * kMB + i]));
}

// A task's scratch: fp32 values of one K block of its columns (bf16 / int8 values
// only; fp32 ones are read in place), then its C block [panel][column][kMB].
constexpr size_t kValueBlockBytes = static_cast<size_t>(kNB * (kKC / 2)) * sizeof(float);
constexpr size_t task_scratch_bytes() {
  return kValueBlockBytes + static_cast<size_t>(kMCP * (kNB + kNR) * kMB) * sizeof(float);
}

// Values [2 g0, 2 g0 + 2 ng) of rows [n0, n0 + ncols) of `values` as fp32, row j at dst + j * (kKC / 2).
template <int VT>
void convert_values(const Sparse24LinearArgs& a, int64_t n0, int64_t ncols, int64_t g0, int64_t ng, float* dst) {
  const int64_t vstride = a.K / 2, nv = 2 * ng;
  const size_t vsize = VT == kBFloat16 ? 2 : 1;
  for (int64_t j = 0; j < ncols; ++j) {
    const void* row = static_cast<const char*>(a.values) + static_cast<size_t>((n0 + j) * vstride + 2 * g0) * vsize;
    float* d = dst + j * (kKC / 2);
    int64_t i = 0;
    for (; i + 8 <= nv; i += 8) _mm256_storeu_ps(d + i, load8<VT>(row, i));
    for (; i < nv; ++i) d[i] = s24_load<VT>(row, i);
  }
}

template <int VT>
void task_t(const Sparse24LinearArgs& a, const float* xp, int64_t p0, int64_t p1, int64_t n0, int64_t n1, void* scratch) {
  const int64_t K = a.K, ncols = n1 - n0, ntiles = (ncols + kNR - 1) / kNR;
  const int64_t mstride = (K + 7) / 8, vstride = K / 2;
  float* vblock = static_cast<float*>(scratch);
  float* cblock = reinterpret_cast<float*>(static_cast<char*>(scratch) + kValueBlockBytes);
  const int64_t cpanel = ntiles * kNR * kMB;  // floats of C per panel
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    const int64_t g0 = k0 / 4, ng = (K - k0 < kKC ? K - k0 : kKC) / 4;
    if constexpr (VT != kFloat32) convert_values<VT>(a, n0, ncols, g0, ng, vblock);
    for (int64_t p = p0; p < p1; ++p) {
      const float* xt = xp + p * K * kMB + k0 * kMB;
      float* cp = cblock + (p - p0) * cpanel;
      // The next xT block (next panel, or the first panel of the next K block), a
      // slice per micro-tile: the kernel reads its rows in random order, which the
      // hardware prefetcher cannot follow, so without this the first micro-tile of
      // every block waits on L2 for each row.
      const int64_t kn = p + 1 < p1 ? k0 : k0 + kKC;
      const char* next = kn < K ? reinterpret_cast<const char*>(xp + (p + 1 < p1 ? p + 1 : p0) * K * kMB + kn * kMB)
                                : nullptr;
      const int64_t next_bytes = (K - kn < kKC ? K - kn : kKC) * kMB * 4;
      const int64_t slice = (next_bytes / 64 + ntiles - 1) / ntiles * 64;
      const int64_t rows = a.M - p * kMB < kMB ? a.M - p * kMB : kMB;
      const int mv = static_cast<int>((rows + kVW - 1) / kVW);
      for (int64_t q = 0; q < ntiles; ++q) {
        if (next)
          for (int64_t b = q * slice; b < (q + 1) * slice && b < next_bytes; b += 64)
            _mm_prefetch(next + b, _MM_HINT_T0);
        const float* vp[kNR];
        const uint8_t* mp[kNR];
        for (int j = 0; j < kNR; ++j) {
          const int64_t jj = q * kNR + j < ncols ? q * kNR + j : ncols - 1;  // past the end: repeat the last column
          vp[j] = VT == kFloat32 ? static_cast<const float*>(a.values) + (n0 + jj) * vstride + 2 * g0
                                 : vblock + jj * (kKC / 2);
          mp[j] = a.meta + (n0 + jj) * mstride + g0 / 2;
        }
        if (k0 == 0) tile_kernel_mv<true>(mv, vp, mp, ng, xt, cp + q * kNR * kMB);
        else tile_kernel_mv<false>(mv, vp, mp, ng, xt, cp + q * kNR * kMB);
      }
    }
  }
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t r0 = p * kMB, rows = a.M - r0 < kMB ? a.M - r0 : kMB;
    const float* cp = cblock + (p - p0) * cpanel;
    if (a.dtype == kFloat32) store_panel<kFloat32>(a, cp, r0, rows, n0, ncols);
    else store_panel<kBFloat16>(a, cp, r0, rows, n0, ncols);
  }
}

template <int DT>
void pack_x_t(const Sparse24LinearArgs& a, int64_t p, float* dst) {
  const int64_t K = a.K, r0 = p * kMB, rows = a.M - r0 < kMB ? a.M - r0 : kMB;
  const size_t esize = s24_esize(DT);
  const char* xb = static_cast<const char*>(a.x);
  auto xrow = [&](int64_t i) { return xb + static_cast<size_t>((r0 + i) * a.x_stride) * esize; };
  int64_t i = 0;
  for (; i + 8 <= rows; i += 8) {
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
      __m256 t[8];
      for (int u = 0; u < 8; ++u) t[u] = load8<DT>(xrow(i + u), k);
      transpose8(t);  // t[s] = k + s, rows i .. i + 7
      for (int s = 0; s < 8; ++s) _mm256_store_ps(dst + (k + s) * kMB + i, t[s]);
    }
    for (; k < K; ++k)
      for (int u = 0; u < 8; ++u) dst[k * kMB + i + u] = s24_load<DT>(xrow(i + u), k);
  }
  for (; i < rows; ++i)
    for (int64_t k = 0; k < K; ++k) dst[k * kMB + i] = s24_load<DT>(xrow(i), k);
  for (int64_t k = 0; k < K && rows < kMB; ++k)
    for (int64_t j = rows; j < kMB; ++j) dst[k * kMB + j] = 0.f;
}

// ---- row kernel

// Largest M for the row kernel; overridable at build time (0 or a large value tests one path alone).
#ifndef TFORGE_SPARSE24_AVX2_ROWS_MAX_M
#define TFORGE_SPARSE24_AVX2_ROWS_MAX_M 8
#endif

constexpr int64_t kRowsMT = 16;   // rows per task
constexpr int64_t kRowsNB = 64;   // columns per task
constexpr int64_t kRowsKC = 4096; // K block (values of k) for several rows; one row takes all of K

int64_t prep_row_floats(int64_t K) { return (K + 15) / 16 * 16; }

// out[i * kRowsNB + j] += the products of rows xr[i] (prepped) and columns j (values
// row vr[j], meta row mr[j]) over chunks [c0, c1) of 16 values of k, for j < nvalid.
// With `tail`, chunk c1 - 1 is the partial last one: its values and meta come
// zero-padded from tv[j] / tm[j].
template <int VT, int MR, int NR>
inline void row_tile(const float* const* xr, const void* const* vr, const uint8_t* const* mr, int64_t c0,
                     int64_t c1, bool tail, const float* const* tv, const uint16_t* tm, float* out, int nvalid) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  auto step = [&](const __m256* V, const __m256i* I, int64_t c) {
    for (int i = 0; i < MR; ++i) {
      const __m256 A = _mm256_load_ps(xr[i] + 16 * c), B = _mm256_load_ps(xr[i] + 16 * c + 8);
      for (int j = 0; j < NR; ++j) {
        const __m256 xs = _mm256_blend_ps(_mm256_permutevar_ps(A, I[j]), _mm256_permutevar_ps(B, I[j]), 0xCC);
        acc[i][j] = _mm256_fmadd_ps(V[j], xs, acc[i][j]);
      }
    }
  };
  const int64_t cf = tail ? c1 - 1 : c1;
  for (int64_t c = c0; c < cf; ++c) {
    __m256 V[NR];
    __m256i I[NR];
    for (int j = 0; j < NR; ++j) {
      V[j] = load8<VT>(vr[j], 8 * c);
      uint16_t m16;
      std::memcpy(&m16, mr[j] + 2 * c, 2);
      I[j] = _mm256_srlv_epi32(_mm256_set1_epi32(m16), shifts);
    }
    step(V, I, c);
  }
  if (tail) {
    __m256 V[NR];
    __m256i I[NR];
    for (int j = 0; j < NR; ++j) {
      V[j] = _mm256_load_ps(tv[j]);
      I[j] = _mm256_srlv_epi32(_mm256_set1_epi32(tm[j]), shifts);
    }
    step(V, I, c1 - 1);
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      if (j < nvalid) out[i * kRowsNB + j] += Vec{acc[i][j]}.hsum();
}

// Rows xr[0, MR) x columns [n0, n0 + ncols) of the task over chunks [c0, c1): out[i][j] +=.
template <int VT, int MR>
void row_strip(const Sparse24LinearArgs& a, const float* const* xr, int64_t n0, int64_t ncols, int64_t c0,
               int64_t c1, bool tail, const float (*tv)[8], const uint16_t* tm, float (*out)[kRowsNB]) {
  constexpr int NR = MR == 1 ? 4 : 2;
  const int64_t mstride = (a.K + 7) / 8, vstride = a.K / 2;
  const size_t vsize = VT == kFloat32 ? 4 : VT == kBFloat16 ? 2 : 1;
  for (int64_t j0 = 0; j0 < ncols; j0 += NR) {
    const void* vr[NR];
    const uint8_t* mr[NR];
    const float* tvp[NR];
    uint16_t tmj[NR];
    for (int j = 0; j < NR; ++j) {
      const int64_t jj = j0 + j < ncols ? j0 + j : ncols - 1;  // past the end: repeat the last column
      vr[j] = static_cast<const char*>(a.values) + static_cast<size_t>((n0 + jj) * vstride) * vsize;
      mr[j] = a.meta + (n0 + jj) * mstride;
      tvp[j] = tv[jj];
      tmj[j] = tm[jj];
    }
    const int nvalid = static_cast<int>(ncols - j0 < NR ? ncols - j0 : NR);
    row_tile<VT, MR, NR>(xr, vr, mr, c0, c1, tail, tvp, tmj, out[0] + j0, nvalid);
  }
}

template <int DT, int VT>
void rows_t(const Sparse24LinearArgs& a, const float* prep, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t K = a.K, rf = prep_row_floats(K), nchunks = rf / 16, ncols = n1 - n0;
  const bool tail = K % 16 != 0;
  const int64_t mstride = (K + 7) / 8, vstride = K / 2;
  const size_t vsize = VT == kFloat32 ? 4 : VT == kBFloat16 ? 2 : 1;
  // Zero-padded values (as fp32) and meta of each column's partial last chunk.
  alignas(32) float tv[kRowsNB][8] = {};
  uint16_t tm[kRowsNB] = {};
  if (tail) {
    const int64_t c = nchunks - 1;
    for (int64_t j = 0; j < ncols; ++j) {
      const void* vrow = static_cast<const char*>(a.values) + static_cast<size_t>((n0 + j) * vstride) * vsize;
      for (int64_t s = 8 * c; s < vstride; ++s) tv[j][s - 8 * c] = s24_load<VT>(vrow, s);
      const uint8_t* mrow = a.meta + (n0 + j) * mstride;
      tm[j] = static_cast<uint16_t>(mrow[2 * c] | (2 * c + 1 < mstride ? mrow[2 * c + 1] << 8 : 0));
    }
  }
  float out[kRowsMT][kRowsNB];
  for (int64_t i = 0; i < m1 - m0; ++i)
    for (int64_t j = 0; j < ncols; ++j) out[i][j] = 0.f;
  // Chunks per K block. A single row is not blocked: each column's values are then
  // one sequential stream, which the hardware prefetcher follows best (M = 1 is
  // bound by reading the weight).
  const int64_t kcc = m1 - m0 == 1 ? nchunks : kRowsKC / 16;
  for (int64_t cb = 0; cb < nchunks; cb += kcc) {
    const int64_t ce = nchunks - cb < kcc ? nchunks : cb + kcc;
    const bool tail_here = tail && ce == nchunks;
    for (int64_t i0 = 0; i0 < m1 - m0;) {
      const float* xr[4];
      const int64_t left = m1 - m0 - i0;
      for (int i = 0; i < 4; ++i) xr[i] = prep + (m0 + i0 + (i < left ? i : 0)) * rf;
      float (*o)[kRowsNB] = out + i0;
      if (left >= 4) { row_strip<VT, 4>(a, xr, n0, ncols, cb, ce, tail_here, tv, tm, o); i0 += 4; }
      else if (left >= 2) { row_strip<VT, 2>(a, xr, n0, ncols, cb, ce, tail_here, tv, tm, o); i0 += 2; }
      else { row_strip<VT, 1>(a, xr, n0, ncols, cb, ce, tail_here, tv, tm, o); i0 += 1; }
    }
  }
  const size_t esize = s24_esize(DT);
  for (int64_t i = 0; i < m1 - m0; ++i) {
    void* yrow = static_cast<char*>(a.y) + static_cast<size_t>((m0 + i) * a.y_stride) * esize;
    int64_t j = 0;
    for (; j + 8 <= ncols; j += 8) store_out8<DT>(a, yrow, n0 + j, _mm256_loadu_ps(out[i] + j));
    for (; j < ncols; ++j) s24_store<DT>(yrow, n0 + j, s24_epilogue(a, n0 + j, out[i][j]));
  }
}

template <int DT>
void rows_prep_t(const Sparse24LinearArgs& a, float* prep, int64_t m0, int64_t m1) {
  const int64_t K = a.K, rf = prep_row_floats(K);
  const size_t esize = s24_esize(DT);
  for (int64_t m = m0; m < m1; ++m) {
    const void* xr = static_cast<const char*>(a.x) + static_cast<size_t>(m * a.x_stride) * esize;
    float* d = prep + m * rf;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {  // [x0..3 x8..11 | x4..7 x12..15]
      const __m256 lo = load8<DT>(xr, k), hi = load8<DT>(xr, k + 8);
      _mm256_store_ps(d + k, _mm256_permute2f128_ps(lo, hi, 0x20));
      _mm256_store_ps(d + k + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
    if (k < K) {
      alignas(32) float t[16] = {};
      for (int64_t u = k; u < K; ++u) t[u - k] = s24_load<DT>(xr, u);
      for (int u = 0; u < 4; ++u) {
        d[k + u] = t[u];
        d[k + 4 + u] = t[8 + u];
        d[k + 8 + u] = t[4 + u];
        d[k + 12 + u] = t[12 + u];
      }
    }
  }
}

}  // namespace

Sparse24Tiling sparse24_tiling() {
  Sparse24Tiling t;
  t.mb = kMB;
  t.nb = kNB;
  t.mc = kMCP * kMB;
  t.rows_max_m = TFORGE_SPARSE24_AVX2_ROWS_MAX_M;
  t.rows_mt = kRowsMT;
  t.rows_nb = kRowsNB;
  return t;
}

void s24_pack_x(const Sparse24LinearArgs& a, int64_t p, float* dst) {
  if (a.dtype == kFloat32) pack_x_t<kFloat32>(a, p, dst);
  else pack_x_t<kBFloat16>(a, p, dst);
}

size_t s24_task_bytes(int64_t K) {
  (void)K;
  return task_scratch_bytes();
}

void s24_task(const Sparse24LinearArgs& a, const float* xp, int64_t p0, int64_t p1, int64_t n0, int64_t n1,
              void* scratch) {
  switch (a.values_dtype) {
    case kFloat32: task_t<kFloat32>(a, xp, p0, p1, n0, n1, scratch); break;
    case kBFloat16: task_t<kBFloat16>(a, xp, p0, p1, n0, n1, scratch); break;
    default: task_t<kInt8>(a, xp, p0, p1, n0, n1, scratch); break;
  }
}

size_t s24_rows_prep_bytes(int64_t M, int64_t K) { return static_cast<size_t>(M * prep_row_floats(K) * 4); }

void s24_rows_prep(const Sparse24LinearArgs& a, void* prep, int64_t m0, int64_t m1) {
  if (a.dtype == kFloat32) rows_prep_t<kFloat32>(a, static_cast<float*>(prep), m0, m1);
  else rows_prep_t<kBFloat16>(a, static_cast<float*>(prep), m0, m1);
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

}  // namespace tforge::cpu::avx2
