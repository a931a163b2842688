// CUDA int8 kernels (W8A8), the entry points bind/int8.cpp calls. Plain C++:
// no CUDA headers, so g++ can include it. Arguments and semantics:
// common/int8_args.h. `stream` is a cudaStream_t cast to uintptr_t
// (torch.cuda.current_stream().cuda_stream), `device` the device index.
// Kernels are launched on that stream without synchronising; argument errors
// throw std::invalid_argument, CUDA errors (and calls without a GPU or driver)
// std::runtime_error.
#pragma once
#include <cstdint>

#include "common/int8_args.h"

namespace tforge::cuda {

// acc = a @ b^T in int32 (exact while |acc| < 2^31, e.g. K <= 2^17 - 1; wraps
// beyond, as torch._int_mm does), written as int32 (a.c_i32) or dequantised,
// biased and cast in the epilogue (a.c, a.out_dtype). Tensor cores (IMMA,
// sm_80+) when a, b and their row strides are 16-byte aligned (any K); a
// slower SIMT kernel otherwise.
void int8_gemm(const Int8GemmArgs& a, int device, uintptr_t stream);

// Symmetric per-row int8 quantisation (fp32 / bf16 / fp16 input).
void quantize_rows(const QuantizeRowsArgs& a, int device, uintptr_t stream);

}  // namespace tforge::cuda
