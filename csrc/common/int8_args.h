// Argument blocks for the int8 kernels (CPU and CUDA): symmetric per-row
// quantisation and the W8A8 GEMM with a fused dequantising epilogue.
//
// GEMM: acc[m, n] = sum_k a[m, k] * b[n, k] in int32 (exact; a and b use the
// full int8 range, -128 included). b has nn.Linear's weight layout [N, K].
// Output, one of:
//   c_i32 != null: c_i32[m, n] = acc                          (int8_matmul)
//   else:          c[m, n] = cast(acc * a_scale[m] * b_scale[n] + bias[n])   (int8_linear)
// computed in fp32 (scales fp32; bias fp32 or null), cast to out_dtype with
// round-to-nearest-even. a_scale may be null (treated as 1) for weight-only use.
//
// Quantise rows: scale[m] = max_k |x[m, k]| / 127 (fp32); q[m, k] =
// clamp(round_half_even(x[m, k] / scale[m]), -127, 127), and q = 0 on rows
// whose scale is 0. x is fp32 / bf16 / fp16 (tforge::DType); with col_scale,
// x[m, k] * col_scale[k] (in fp32) replaces x[m, k] throughout.
#pragma once
#include <cstdint>

namespace tforge {

struct Int8GemmArgs {
  const int8_t* a = nullptr;   // [M, a_stride]
  int64_t a_stride = 0;
  const int8_t* b = nullptr;   // [N, b_stride]
  int64_t b_stride = 0;
  int64_t M = 0, N = 0, K = 0;
  int32_t* c_i32 = nullptr;    // [M, N] contiguous, or null
  void* c = nullptr;           // [M, N] contiguous, out_dtype
  int out_dtype = 0;           // tforge::DType
  const float* a_scale = nullptr;  // [M] or null
  const float* b_scale = nullptr;  // [N] (required for the fused form)
  const float* bias = nullptr;     // [N] or null
};

struct QuantizeRowsArgs {
  const void* x = nullptr;     // [rows, x_stride], dtype
  int64_t x_stride = 0;
  int64_t rows = 0, cols = 0;
  int dtype = 0;
  int8_t* q = nullptr;         // [rows, cols] contiguous
  float* scale = nullptr;      // [rows]
  // [cols] or null: x[m, k] * col_scale[k] (fp32) is what gets quantised, e.g.
  // SmoothQuant's 1/s when it could not be folded into a norm. CPU kernels only.
  const float* col_scale = nullptr;
};

}  // namespace tforge
