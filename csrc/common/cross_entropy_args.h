// Argument block of the cross-entropy kernels (CPU and CUDA), bound to Python once in
// csrc/bind/cross_entropy.cpp and filled by field name from python/tforge/ops/cross_entropy.py.
//
// logits [rows, cols] with unit column stride and row stride logits_stride >= cols, dtype
// (tforge::DType); target [rows] int64 (int32 when target_int32). A row whose target is
// ignore_index counts for nothing: loss 0, gradient row 0. Every other target must lie in [0, cols).
// The logsumexp of a row is kept as two numbers, its max m and ls = log(sum(exp(x - m))), so that
// x - lse is formed as (x - m) - ls: exact to fp32 where m + ls itself would round (|logits| ~ 1e4).
//   forward:  loss[r] = (m - logits[r, target[r]]) + ls (fp32); row_max[r] = m and row_logsum[r] = ls
//             when given; when grad is given,
//             grad[r, :] = (softmax(logits[r, :]) - onehot(target[r])) * grad_scale.
//   backward: grad[r, :] = (exp((logits[r, :] - row_max[r]) - row_logsum[r]) - onehot(target[r]))
//             * row_scale[r], with row_max / row_logsum as the forward wrote them.
// grad is contiguous [rows, cols] in the logits' dtype; all math in fp32.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/checks.h"
#include "common/dtype.h"

namespace tforge {

struct CrossEntropyArgs {
  const void* logits = nullptr;       // [rows, logits_stride]
  int64_t logits_stride = 0;
  int64_t rows = 0, cols = 0;
  int dtype = 0;                      // tforge::DType of logits and grad
  const void* target = nullptr;       // [rows] int64, or int32 when target_int32
  bool target_int32 = false;
  int64_t ignore_index = -100;
  float* loss = nullptr;              // forward: [rows] out
  float* row_max = nullptr;           // forward: [rows] out or null; backward: [rows] in
  float* row_logsum = nullptr;        // the same
  void* grad = nullptr;               // [rows, cols] out; forward: or null
  float grad_scale = 1.f;             // forward: every row's gradient factor (1 / count for "mean")
  const float* row_scale = nullptr;   // backward: [rows], each row's incoming gradient

  int64_t target_at(int64_t r) const {
    return target_int32 ? static_cast<const int32_t*>(target)[r] : static_cast<const int64_t*>(target)[r];
  }

  // Throws std::invalid_argument (ValueError) naming the first thing wrong. `dtypes` lists the
  // logits dtypes the caller's kernels take (a bit per tforge::DType).
  void check(const char* op, bool backward, unsigned dtypes) const {
    TF_CHECK_ARG(rows >= 0, op, ": rows must be >= 0, got ", rows);
    TF_CHECK_ARG(cols >= 1, op, ": the class (last) dimension must be >= 1, got ", cols);
    TF_CHECK_ARG(dtype >= 0 && dtype < 8 && ((dtypes >> dtype) & 1u), op, ": logits dtype ", dtype_name(dtype),
                 " is not supported by this kernel");
    TF_CHECK_ARG(backward || std::isfinite(grad_scale), op, ": grad_scale must be finite, got ", grad_scale);
    if (rows == 0) return;
    TF_CHECK_ARG(logits != nullptr, op, ": logits is a null pointer");
    TF_CHECK_ARG(logits_stride >= cols, op, ": logits row stride ", logits_stride, " is smaller than the row length ",
                 cols);
    TF_CHECK_ARG(target != nullptr, op, ": target is a null pointer");
    if (backward) {
      TF_CHECK_ARG(row_max != nullptr && row_logsum != nullptr, op, ": row_max or row_logsum is a null pointer");
      TF_CHECK_ARG(row_scale != nullptr, op, ": row_scale is a null pointer");
      TF_CHECK_ARG(grad != nullptr, op, ": grad is a null pointer");
    } else {
      TF_CHECK_ARG(loss != nullptr, op, ": loss is a null pointer");
      TF_CHECK_ARG((row_max == nullptr) == (row_logsum == nullptr), op, ": row_max and row_logsum go together");
    }
  }

  // Host-readable targets only (the CPU kernels): every target in [0, cols) or ignore_index.
  void check_targets(const char* op) const {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = target_at(r);
      TF_CHECK_ARG(t == ignore_index || (t >= 0 && t < cols), op, ": target[", r, "] = ", t, " is outside [0, ",
                   cols, ") and is not ignore_index (", ignore_index, ")");
    }
  }
};

}  // namespace tforge
