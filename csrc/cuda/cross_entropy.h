// CUDA cross-entropy: the entry points csrc/bind/cross_entropy.cpp calls. Plain C++ (no CUDA headers).
// `stream` is a cudaStream_t cast to uintptr_t, `device` the device index. Kernels are launched on that
// stream without synchronising; argument errors throw std::invalid_argument, CUDA errors
// std::runtime_error. Targets live on the GPU, so the host cannot check them: a target outside
// [0, cols) that is not ignore_index gives that row a NaN loss and no onehot term (never an
// out-of-bounds read); the Python layer rejects such targets before launching.
#pragma once
#include <cstdint>

#include "common/cross_entropy_args.h"

namespace tforge::cuda {

void cross_entropy_fwd(const CrossEntropyArgs& a, int device, uintptr_t stream);
void cross_entropy_bwd(const CrossEntropyArgs& a, int device, uintptr_t stream);

}  // namespace tforge::cuda
