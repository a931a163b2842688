// CUDA LayerNorm / RMSNorm (plain and fused with a residual add), the entry
// points bind/norm.cpp calls. Plain C++: no CUDA headers, so g++ can include it.
// `stream` is a cudaStream_t cast to uintptr_t (torch.cuda.current_stream()
// .cuda_stream); `device` the device index. Kernels are launched on that
// stream without synchronising; argument errors throw std::invalid_argument,
// CUDA errors (and calls without a GPU or driver) std::runtime_error.
#pragma once
#include <cstdint>
#include <string>

#include "common/norm_args.h"

namespace tforge::cuda {

// Number of CUDA devices; 0 when there is no driver or GPU. Never throws.
int device_count();

// e.g. "cudart 13000, driver 13000, 1 device(s): NVIDIA H200 (sm_90)", or the
// error text when no device can be used.
std::string runtime_info();

void norm_fwd(const NormFwdArgs& a, int device, uintptr_t stream);

// fp32 scratch elements norm_bwd needs for the dweight/dbias partials:
// (number of requested grads) * P * cols, P chosen from rows, cols and the
// device's SM count; 0 when neither grad is requested or rows == 0.
int64_t norm_bwd_workspace_floats(const NormBwdArgs& a, int device);

void norm_bwd(const NormBwdArgs& a, float* workspace, int64_t workspace_floats, int device, uintptr_t stream);

}  // namespace tforge::cuda
