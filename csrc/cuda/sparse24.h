// CUDA 2:4 sparse kernels, the entry points bind/sparse24.cpp calls. Plain C++:
// no CUDA headers, so g++ can include it. Packed format and semantics:
// common/sparse24_args.h. `stream` is a cudaStream_t cast to uintptr_t
// (torch.cuda.current_stream().cuda_stream), `device` the device index.
// Kernels are launched on that stream without synchronising; argument errors
// throw std::invalid_argument, CUDA errors (and calls without a GPU or driver)
// std::runtime_error.
#pragma once
#include <cstdint>

#include "common/sparse24_args.h"

namespace tforge::cuda {

// y [M, N] = x [M, K] @ W^T (+ bias) with W packed 2:4, on the sparse tensor
// cores (mma.sp, sm_80+). x, values and y: bfloat16 or float16 (one dtype),
// fp32 accumulation, bias fp32 or null. Any M, N; K % 4 == 0. float32 and
// int8 values are rejected (std::invalid_argument): other backends serve them.
// Bytes of workspace sparse24_linear needs (split-K partials and arrival counters; 0 when it runs
// unsplit), from the caller's allocator (torch's caching allocator in tforge/ops/sparse24.py).
int64_t sparse24_linear_workspace_bytes(const Sparse24LinearArgs& a, int device);

void sparse24_linear(const Sparse24LinearArgs& a, void* workspace, int64_t workspace_bytes, int device,
                     uintptr_t stream);

// N:M mask of fp32 / bf16 / fp16 scores: the n largest of each group of m
// consecutive columns (ties: the lower column index wins), m <= 16.
void nm_mask(const NMMaskArgs& a, int device, uintptr_t stream);

}  // namespace tforge::cuda
