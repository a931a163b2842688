// Argument blocks for the LayerNorm / RMSNorm kernels, shared by the CPU and
// CUDA back ends. All tensors are viewed as rows x cols with unit stride along
// cols; x, residual and dy may have a row stride > cols (views of wider
// tensors). Outputs are contiguous. mean/rstd are fp32, one per row (mean is
// unused for RMSNorm). weight/bias have the dtype of x, or are null.
#pragma once
#include <cstdint>

namespace tforge {

struct NormFwdArgs {
  const void* x = nullptr;          // [rows, x_stride]
  int64_t x_stride = 0;
  const void* residual = nullptr;   // [rows, residual_stride]; null: plain norm
  int64_t residual_stride = 0;
  const void* weight = nullptr;     // [cols] or null
  const void* bias = nullptr;       // [cols] or null (LayerNorm only)
  void* y = nullptr;                // [rows, cols]
  void* residual_out = nullptr;     // [rows, cols] = x + residual, when residual
  float* mean = nullptr;            // [rows], LayerNorm only
  float* rstd = nullptr;            // [rows]
  int64_t rows = 0, cols = 0;
  float eps = 1e-5f;
  int dtype = 0;                    // tforge::DType
  bool rms = false;
};

struct NormBwdArgs {
  const void* dy = nullptr;             // [rows, dy_stride]
  int64_t dy_stride = 0;
  const void* dresidual_out = nullptr;  // [rows, dres_stride] or null
  int64_t dres_stride = 0;
  const void* x = nullptr;              // normalised input (residual_out when fused)
  int64_t x_stride = 0;
  const void* weight = nullptr;         // [cols] or null
  const float* mean = nullptr;          // [rows], LayerNorm only
  const float* rstd = nullptr;          // [rows]
  void* dx = nullptr;                   // [rows, cols]
  void* dweight = nullptr;              // [cols] or null
  void* dbias = nullptr;                // [cols] or null
  int64_t rows = 0, cols = 0;
  int dtype = 0;
  bool rms = false;
};

}  // namespace tforge
