// Attention: the register-blocked fp32 products, written once over Vec (see attention_kernels.h, which
// includes this inside its ISA namespace and anonymous namespace, after the constants they use; no
// include guard: each ISA translation unit includes it once, in its own namespace).

// ---------------------------------------------------------------- micro-kernels

enum GemmMode { kSet = 0, kAdd = 1, kScaleAdd = 2 };

// C[r][c] for r < R, c < NV*W (ldc): kSet: =, kAdd: +=, kScaleAdd: = C * cscale[c] + ...
//   sum over k < K of a(r, k) * B[k * ldb + c],
// a(r, k) = A[r * lda + k] (A_ROWS) or A[k * lda + r] (!A_ROWS).
template <int R, int NV, int MODE, bool A_ROWS>
inline void micro(int64_t K, const float* __restrict A, int64_t lda, const float* __restrict B, int64_t ldb,
                  float* __restrict C, int64_t ldc, const float* __restrict cscale) {
  Vec acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if constexpr (MODE == kSet) acc[r][v] = Vec::zero();
      else if constexpr (MODE == kAdd) acc[r][v] = Vec::load(C + r * ldc + v * Vec::W);
      else acc[r][v] = Vec::load(C + r * ldc + v * Vec::W) * Vec::load(cscale + v * Vec::W);
    }
  }
  if constexpr (A_ROWS) {
    const float* ap[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) ap[r] = A + r * lda;
    for (int64_t k = 0; k < K; ++k) {
      Vec bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = Vec::load(B + v * Vec::W);
      B += ldb;
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const Vec av = Vec::set1(ap[r][k]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = Vec::fma(av, bv[v], acc[r][v]);
      }
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      Vec bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = Vec::load(B + v * Vec::W);
      B += ldb;
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const Vec av = Vec::set1(A[r]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = Vec::fma(av, bv[v], acc[r][v]);
      }
      A += lda;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) Vec::store(C + r * ldc + v * Vec::W, acc[r][v]);
  }
}

template <int NV, int MODE, bool A_ROWS>
inline void micro_rows(int64_t rows, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                       float* C, int64_t ldc, const float* cscale) {
  const int64_t astep = A_ROWS ? lda : 1;
  int64_t r = 0;
  for (; r + kMR <= rows; r += kMR)
    micro<kMR, NV, MODE, A_ROWS>(K, A + r * astep, lda, B, ldb, C + r * ldc, ldc, cscale);
  const float* a = A + r * astep;
  float* c = C + r * ldc;
  switch (rows - r) {
    case 5: micro<5, NV, MODE, A_ROWS>(K, a, lda, B, ldb, c, ldc, cscale); break;
    case 4: micro<4, NV, MODE, A_ROWS>(K, a, lda, B, ldb, c, ldc, cscale); break;
    case 3: micro<3, NV, MODE, A_ROWS>(K, a, lda, B, ldb, c, ldc, cscale); break;
    case 2: micro<2, NV, MODE, A_ROWS>(K, a, lda, B, ldb, c, ldc, cscale); break;
    case 1: micro<1, NV, MODE, A_ROWS>(K, a, lda, B, ldb, c, ldc, cscale); break;
    default: break;
  }
}

// C [M][N] (ldc) (+)= A-product with B [K][N] (ldb); N a multiple of Vec::W.
// Column panels outer (a K x 16 panel of B stays in L1), row tiles inner.
template <int MODE, bool A_ROWS>
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
          int64_t ldc, const float* cscale = nullptr) {
  constexpr int64_t P = kNV * Vec::W;
  int64_t n = 0;
  for (; n + P <= N; n += P)
    micro_rows<kNV, MODE, A_ROWS>(M, K, A, lda, B + n, ldb, C + n, ldc, cscale ? cscale + n : nullptr);
  for (; n < N; n += Vec::W)
    micro_rows<1, MODE, A_ROWS>(M, K, A, lda, B + n, ldb, C + n, ldc, cscale ? cscale + n : nullptr);
}
