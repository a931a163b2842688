// Int8 kernels written once and compiled per ISA: the GEMM epilogue
// (int8_store), quantize_rows and the row kernel of the GEMM (small M, B read
// as it is). Included *inside* namespace tforge::cpu::<isa> (after <cstring>,
// common/dtype.h and cpu/int8.h), after the ISA has defined:
//   Vec, VecOne   fp32 vectors (vec_avx2.h / vec_one.h); Vec may be VecOne
//   TFORGE_INT8_VEC_AVX2   if Vec is vec_avx2.h's (TU built with AVX2 and F16C):
//                 the 8-wide hooks below are used, and F16C for fp16 tails;
//                 otherwise fp16 is converted in software
//   RowsK         the row kernel's inner step (see int8_rows_gemm below)
//
// Integer sums are taken modulo 2^32 (unsigned arithmetic in the scalar code,
// wrapping vector adds in the SIMD code): a kernel may add an offset that it
// subtracts afterwards (corr), and the result is exact whenever the true value
// fits in int32 (K <= kInt8MaxK).

namespace {

// ---- fp16 <-> fp32, round to nearest even

#if defined(TFORGE_INT8_VEC_AVX2)
inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
inline uint16_t float_to_half(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#else
using ::tforge::float_to_half;  // common/dtype.h
using ::tforge::half_to_float;
#endif

#if defined(TFORGE_INT8_VEC_AVX2)
// ---- 8-wide hooks (the one-lane versions below document them)
inline Vec load_acc(Vec, const int32_t* p, int32_t sub) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {_mm256_cvtepi32_ps(_mm256_sub_epi32(v, _mm256_set1_epi32(sub)))};
}
inline void store_acc(Vec, int32_t* dst, const int32_t* p, int32_t sub) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_sub_epi32(v, _mm256_set1_epi32(sub)));
}
inline Vec load_f16(Vec, const uint16_t* p) {
  return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
}
inline void store_f16(uint16_t* p, Vec v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline Vec absmax_acc(Vec acc, Vec x) {
  const __m256i b = _mm256_and_si256(_mm256_castps_si256(x.v), _mm256_set1_epi32(0x7fffffff));
  return {_mm256_castsi256_ps(_mm256_max_epi32(_mm256_castps_si256(acc.v), b))};
}
inline float absmax_h(Vec acc) {
  __m128i m = _mm_max_epi32(_mm256_castsi256_si128(_mm256_castps_si256(acc.v)),
                            _mm256_extracti128_si256(_mm256_castps_si256(acc.v), 1));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4e));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0xb1));
  return _mm_cvtss_f32(_mm_castsi128_ps(m));
}
inline Vec vdiv(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }

// q[0..8) = clamp(round_half_even(v), -127, 127); v finite.
inline void store_q(int8_t* q, Vec v) {
  __m256 r = _mm256_round_ps(v.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-127.f)), _mm256_set1_ps(127.f));
  const __m256i i = _mm256_cvtps_epi32(r);
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(q), _mm_packs_epi16(w, w));
}
#endif

inline int32_t wrap_sub(int32_t x, int32_t y) {
  return static_cast<int32_t>(static_cast<uint32_t>(x) - static_cast<uint32_t>(y));
}
inline int32_t wrap_add(int32_t x, int32_t y) {
  return static_cast<int32_t>(static_cast<uint32_t>(x) + static_cast<uint32_t>(y));
}

// ---- one-lane hooks (the tails of the vector loops, and the whole of the scalar ISA)

// float(p[0] - sub)
inline VecOne load_acc(VecOne, const int32_t* p, int32_t sub) { return {static_cast<float>(wrap_sub(*p, sub))}; }
inline void store_acc(VecOne, int32_t* dst, const int32_t* p, int32_t sub) { *dst = wrap_sub(*p, sub); }
inline VecOne load_f16(VecOne, const uint16_t* p) { return {half_to_float(*p)}; }
inline void store_f16(uint16_t* p, VecOne v) { *p = float_to_half(v.v); }

// Running max of |x| computed on the bit patterns (sign cleared): for non-negative
// floats the integer order is the float order, and NaN (above +inf) wins whatever
// the order of the operands, so a row with a NaN gets a NaN absmax on every ISA.
inline VecOne absmax_acc(VecOne acc, VecOne x) {
  uint32_t a, b;
  __builtin_memcpy(&a, &acc.v, 4);
  __builtin_memcpy(&b, &x.v, 4);
  b &= 0x7fffffffu;
  const uint32_t m = a > b ? a : b;
  VecOne r;
  __builtin_memcpy(&r.v, &m, 4);
  return r;
}
inline float absmax_h(VecOne acc) { return acc.v; }
inline VecOne vdiv(VecOne a, VecOne b) { return {a.v / b.v}; }

// q[0] = clamp(round_half_even(v), -127, 127); v is finite. Clamping first is the
// same (the bounds are integers); then |v| <= 127 and adding and subtracting
// 1.5 * 2^23 rounds to an integer, to nearest even (the default FP environment).
inline void store_q(int8_t* q, VecOne v) {
  float c = v.v > -127.f ? v.v : -127.f;
  c = c < 127.f ? c : 127.f;
  const float r = (c + 12582912.f) - 12582912.f;
  *q = static_cast<int8_t>(static_cast<int>(r));
}

// v, opaque to the optimiser: a product passed through it cannot be contracted with
// the following add into an FMA (GCC contracts by default in C++, and only the ISAs
// with FMA would), so every ISA rounds the epilogue the same way.
template <class V>
inline V no_contract(V v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(v.v));
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(v.v));
#endif
  return v;
}

// f(V{}, i) over [0, n): Vec-wide steps, then one-lane steps for the tail.
template <class F>
inline void i8_vec_loop(int64_t n, F&& f) {
  int64_t i = 0;
  if constexpr (Vec::W > 1)
    for (; i + Vec::W <= n; i += Vec::W) f(Vec{}, i);
  for (; i < n; ++i) f(VecOne{}, i);
}

template <int DT, class V>
inline V load_x(V tag, const void* p, int64_t i) {
  if constexpr (DT == kFloat32) return V::load(static_cast<const float*>(p) + i);
  else if constexpr (DT == kBFloat16) return V::load(static_cast<const uint16_t*>(p) + i);
  else return load_f16(tag, static_cast<const uint16_t*>(p) + i);
}

template <int DT, class V>
inline void store_out(void* p, int64_t i, V v) {
  if constexpr (DT == kFloat32) V::store(static_cast<float*>(p) + i, v);
  else if constexpr (DT == kBFloat16) V::store(static_cast<uint16_t*>(p) + i, v);
  else store_f16(static_cast<uint16_t*>(p) + i, v);
}

// ---- epilogue

template <int DT, bool HAS_BIAS>
void store_fused(const Int8GemmArgs& a, const int32_t* acc, int64_t ldc, int64_t m0, int64_t rows, int64_t n0,
                 int64_t cols, const int32_t* corr) {
  const size_t esize = DT == kFloat32 ? 4 : 2;
  const float* bs = a.b_scale + n0;
  const float* bias = a.bias + (HAS_BIAS ? n0 : 0);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t m = m0 + i;
    const int32_t* src = acc + i * ldc;
    const int32_t sub = corr ? corr[i] : 0;
    const float as = a.a_scale ? a.a_scale[m] : 1.f;
    void* out = static_cast<char*>(a.c) + (m * a.N + n0) * esize;
    // (acc * a_scale) * b_scale + bias, in that order and without FMA, on every ISA
    i8_vec_loop(cols, [&](auto tag, int64_t j) {
      using V = decltype(tag);
      V v = no_contract(load_acc(tag, src + j, sub) * V::set1(as) * V::load(bs + j));
      if constexpr (HAS_BIAS) v = v + V::load(bias + j);
      store_out<DT>(out, j, v);
    });
  }
}

// ---- quantize_rows

template <int DT, bool COL_SCALE>
void quantize_rows_t(const QuantizeRowsArgs& a, int64_t r0, int64_t r1) {
  const int64_t n = a.cols;
  const size_t esize = DT == kFloat32 ? 4 : 2;
  const float* cs = a.col_scale;
  for (int64_t r = r0; r < r1; ++r) {
    const void* xrow = static_cast<const char*>(a.x) + r * a.x_stride * esize;
    int8_t* q = a.q + r * n;
    // x[i], times col_scale[i] when given (fused: no scaled copy of x is made)
    auto xv = [&](auto tag, int64_t i) {
      using V = decltype(tag);
      V v = load_x<DT>(tag, xrow, i);
      if constexpr (COL_SCALE) v = v * V::load(cs + i);
      return v;
    };
    // pass 1: max |x|
    float amax = 0.f;
    {
      int64_t i = 0;
      if constexpr (Vec::W > 1) {
        Vec m0 = Vec::zero(), m1 = Vec::zero();
        for (; i + 2 * Vec::W <= n; i += 2 * Vec::W) {
          m0 = absmax_acc(m0, xv(Vec{}, i));
          m1 = absmax_acc(m1, xv(Vec{}, i + Vec::W));
        }
        for (; i + Vec::W <= n; i += Vec::W) m0 = absmax_acc(m0, xv(Vec{}, i));
        amax = absmax_h(absmax_acc(m0, m1));
      }
      VecOne m = VecOne::set1(amax);
      for (; i < n; ++i) m = absmax_acc(m, xv(VecOne{}, i));
      amax = m.v;
    }
    const float scale = amax / 127.f;
    a.scale[r] = scale;
    // Rows of zeros (or whose max underflows to a zero scale) get q = 0; so do rows
    // with an inf (scale inf: every finite x rounds to 0) or a NaN (scale NaN).
    if (!(scale > 0.f && scale <= 3.40282347e38f)) {
      std::memset(q, 0, static_cast<size_t>(n));
      continue;
    }
    // pass 2: q = clamp(round_half_even(x / scale)); a true division, as the reference does
    i8_vec_loop(n, [&](auto tag, int64_t i) {
      using V = decltype(tag);
      store_q(q + i, vdiv(xv(tag, i), V::set1(scale)));
    });
  }
}

// ---- row kernel
// prep: M rows of RowsK::row_bytes(K) bytes (A converted for RowsK::load_a, in
// chunks of RowsK::CH values of k, the last one partial), then int32 corr[M]
// if RowsK::kRowCorr (subtracted from every accumulator of the row).
// RowsK provides:
//   CH, KB (chunks per K block), NB (columns per tile), kRowCorr, nr_for(mr)
//   Acc, A, B types; zero(), load_a(row, chunk), load_b(b_row, chunk),
//   load_b_tail(b_row, K) (the partial last chunk), dot(acc, a, b), hsum(acc)
//   row_bytes(K), prep_row(a_row, K, dst, corr)

constexpr int64_t kRowsMB = 16;  // rows of A per tile of the row kernel

inline int64_t rows_prep_rows_bytes(int64_t M, int64_t K) {
  return (M * RowsK::row_bytes(K) + 63) / 64 * 64;
}

// tile[i * ldt + j] += sum over chunks [c0, c1) of row i of prep x row j of b, for
// i < MR, j < nvalid (the pointers of rows past nvalid repeat a valid row).
template <int MR, int NR>
inline void rows_block(const char* prep, int64_t prow_bytes, const int8_t* const* brow, int64_t K, int64_t c0,
                       int64_t c1, int32_t* tile, int64_t ldt, int nvalid) {
  const int64_t nfull = K / RowsK::CH;
  typename RowsK::Acc acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = RowsK::zero();
  const int64_t cf = c1 < nfull ? c1 : nfull;
  for (int64_t c = c0; c < cf; ++c) {
    typename RowsK::B b[NR];
    for (int j = 0; j < NR; ++j) b[j] = RowsK::load_b(brow[j], c);
    for (int i = 0; i < MR; ++i) {
      const typename RowsK::A av = RowsK::load_a(prep + i * prow_bytes, c);
      for (int j = 0; j < NR; ++j) acc[i][j] = RowsK::dot(acc[i][j], av, b[j]);
    }
  }
  if (c1 > nfull) {  // the partial last chunk
    typename RowsK::B b[NR];
    for (int j = 0; j < NR; ++j) b[j] = RowsK::load_b_tail(brow[j], K);
    for (int i = 0; i < MR; ++i) {
      const typename RowsK::A av = RowsK::load_a(prep + i * prow_bytes, nfull);
      for (int j = 0; j < NR; ++j) acc[i][j] = RowsK::dot(acc[i][j], av, b[j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      if (j < nvalid) tile[i * ldt + j] = wrap_add(tile[i * ldt + j], RowsK::hsum(acc[i][j]));
}

template <int MR>
inline void rows_strip(const Int8GemmArgs& a, const char* prep, int64_t prow_bytes, int64_t n0, int64_t cols,
                       int64_t c0, int64_t c1, int32_t* tile, int64_t ldt) {
  constexpr int NR = RowsK::nr_for(MR);
  for (int64_t j0 = 0; j0 < cols; j0 += NR) {
    const int nvalid = static_cast<int>(cols - j0 < NR ? cols - j0 : NR);
    const int8_t* brow[NR];
    for (int j = 0; j < NR; ++j) brow[j] = a.b + (n0 + j0 + (j < nvalid ? j : nvalid - 1)) * a.b_stride;
    rows_block<MR, NR>(prep, prow_bytes, brow, a.K, c0, c1, tile + j0, ldt, nvalid);
  }
}

}  // namespace

void int8_store(const Int8GemmArgs& a, const int32_t* acc, int64_t ldc, int64_t m0, int64_t rows, int64_t n0,
                int64_t cols, const int32_t* corr) {
  if (a.c_i32) {
    for (int64_t i = 0; i < rows; ++i) {
      const int32_t* src = acc + i * ldc;
      const int32_t sub = corr ? corr[i] : 0;
      int32_t* dst = a.c_i32 + (m0 + i) * a.N + n0;
      i8_vec_loop(cols, [&](auto tag, int64_t j) { store_acc(tag, dst + j, src + j, sub); });
    }
    return;
  }
  const bool bias = a.bias != nullptr;
  switch (a.out_dtype) {
    case kFloat32:
      bias ? store_fused<kFloat32, true>(a, acc, ldc, m0, rows, n0, cols, corr)
           : store_fused<kFloat32, false>(a, acc, ldc, m0, rows, n0, cols, corr);
      break;
    case kBFloat16:
      bias ? store_fused<kBFloat16, true>(a, acc, ldc, m0, rows, n0, cols, corr)
           : store_fused<kBFloat16, false>(a, acc, ldc, m0, rows, n0, cols, corr);
      break;
    default:
      bias ? store_fused<kFloat16, true>(a, acc, ldc, m0, rows, n0, cols, corr)
           : store_fused<kFloat16, false>(a, acc, ldc, m0, rows, n0, cols, corr);
      break;
  }
}

void quantize_rows_range(const QuantizeRowsArgs& a, int64_t r0, int64_t r1) {
  switch (a.dtype) {
    case kFloat32:
      a.col_scale ? quantize_rows_t<kFloat32, true>(a, r0, r1) : quantize_rows_t<kFloat32, false>(a, r0, r1);
      break;
    case kBFloat16:
      a.col_scale ? quantize_rows_t<kBFloat16, true>(a, r0, r1) : quantize_rows_t<kBFloat16, false>(a, r0, r1);
      break;
    default:
      a.col_scale ? quantize_rows_t<kFloat16, true>(a, r0, r1) : quantize_rows_t<kFloat16, false>(a, r0, r1);
      break;
  }
}

size_t int8_rows_prep_bytes(int64_t M, int64_t K) {
  return static_cast<size_t>(rows_prep_rows_bytes(M, K) + M * 4);
}

void int8_rows_prep(const Int8GemmArgs& a, void* prep) {
  const int64_t rb = RowsK::row_bytes(a.K);
  char* p = static_cast<char*>(prep);
  int32_t* corr = reinterpret_cast<int32_t*>(p + rows_prep_rows_bytes(a.M, a.K));
  for (int64_t m = 0; m < a.M; ++m) RowsK::prep_row(a.a + m * a.a_stride, a.K, p + m * rb, corr + m);
}

void int8_rows_gemm(const Int8GemmArgs& a, const void* prep, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  constexpr int64_t NB = RowsK::NB;
  const int64_t rb = RowsK::row_bytes(a.K);
  const char* p = static_cast<const char*>(prep);
  const int32_t* corr =
      RowsK::kRowCorr ? reinterpret_cast<const int32_t*>(p + rows_prep_rows_bytes(a.M, a.K)) : nullptr;
  const int64_t nchunks = (a.K + RowsK::CH - 1) / RowsK::CH;
  alignas(64) int32_t tile[kRowsMB * NB];
  for (int64_t nb0 = n0; nb0 < n1; nb0 += NB) {
    const int64_t cols = n1 - nb0 < NB ? n1 - nb0 : NB;
    for (int64_t mb0 = m0; mb0 < m1; mb0 += kRowsMB) {
      const int64_t rows = m1 - mb0 < kRowsMB ? m1 - mb0 : kRowsMB;
      for (int64_t i = 0; i < rows * NB; ++i) tile[i] = 0;
      for (int64_t c0 = 0; c0 < nchunks; c0 += RowsK::KB) {
        const int64_t c1 = nchunks - c0 < RowsK::KB ? nchunks : c0 + RowsK::KB;
        for (int64_t i0 = 0; i0 < rows;) {
          const char* pr = p + (mb0 + i0) * rb;
          int32_t* t = tile + i0 * NB;
          switch (rows - i0) {
            case 1: rows_strip<1>(a, pr, rb, nb0, cols, c0, c1, t, NB); i0 += 1; break;
            case 2: rows_strip<2>(a, pr, rb, nb0, cols, c0, c1, t, NB); i0 += 2; break;
            case 3: rows_strip<3>(a, pr, rb, nb0, cols, c0, c1, t, NB); i0 += 3; break;
            default: rows_strip<4>(a, pr, rb, nb0, cols, c0, c1, t, NB); i0 += 4; break;
          }
        }
      }
      int8_store(a, tile, NB, mb0, rows, nb0, cols, corr ? corr + mb0 : nullptr);
    }
  }
}
