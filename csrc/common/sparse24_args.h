// Argument blocks for the 2:4 sparse kernels (CPU and CUDA).
//
// Packed 2:4 weight W [N, K] (nn.Linear layout), K % 4 == 0:
//   values [N, K/2] contiguous: the two kept entries of each group of 4
//          consecutive columns, in increasing column order.
//   meta   [N, ceil(K/8)] uint8 contiguous: one nibble per group g (byte g/2,
//          low nibble for even g), nibble = i0 | i1 << 2 with i0 < i1 the
//          in-group positions of values[n, 2g] and values[n, 2g+1]. This is
//          the natural (uncompressed) order; the CUDA kernel reorders it into
//          the mma.sp fragment layout itself.
//
// Sparse linear: y[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]), accumulated in
// fp32. x and y share `dtype`; values have `values_dtype`, which equals dtype
// except for weight-only int8 (values_dtype kInt8, scale [N] required):
//   y[m, n] = acc * scale[n] + bias[n].
//
// N:M mask: in each group of m consecutive columns of scores [rows, cols],
// mask = 1 for the n largest scores; among equal scores the lower column
// index wins. NaN scores are rejected on the Python side.
#pragma once
#include <cstdint>

namespace tforge {

constexpr int kInt8 = 3;  // values dtype code for int8 weights (beside tforge::DType's 0..2)

struct Sparse24LinearArgs {
  const void* x = nullptr;        // [M, x_stride], dtype
  int64_t x_stride = 0;
  const void* values = nullptr;   // [N, K/2], values_dtype
  const uint8_t* meta = nullptr;  // [N, ceil(K/8)]
  int64_t M = 0, N = 0, K = 0;
  int dtype = 0;                  // tforge::DType of x and y
  int values_dtype = 0;           // tforge::DType, or kInt8
  void* y = nullptr;              // [M, y_stride], dtype
  int64_t y_stride = 0;
  const float* bias = nullptr;    // [N] or null
  const float* scale = nullptr;   // [N]; required iff values_dtype == kInt8
};

struct NMMaskArgs {
  const void* scores = nullptr;   // [rows, s_stride], dtype
  int64_t s_stride = 0;
  int64_t rows = 0, cols = 0;
  int dtype = 0;
  int n = 2, m = 4;               // 1 <= n <= m <= 16, cols % m == 0
  uint8_t* mask = nullptr;        // [rows, cols] contiguous, 0/1
};

}  // namespace tforge
