// CUDA flash attention (FlashAttention-2 style, mma.sync tensor cores), the
// entry points bind/attention.cpp calls. Plain C++: no CUDA headers, so g++ can
// include it. Arguments, layouts and masking rules: common/attention_args.h.
// `stream` is a cudaStream_t cast to uintptr_t, `device` the device index.
// Kernels are launched on that stream without synchronising; argument errors
// (including a head_dim / dtype the kernels do not serve) throw
// std::invalid_argument, CUDA errors (and calls without a GPU or driver)
// std::runtime_error.
#pragma once
#include <cstdint>

#include "common/attention_args.h"

namespace tforge::cuda {

// True when the CUDA kernels serve this head_dim / dtype: head_dim 32, 64 or
// 128 with bfloat16 or float16 (the Python layer routes the rest to Triton).
bool attention_supported(int64_t head_dim, int dtype);

// out = softmax(scale * q k^T + bias, masked) v, and lse.
void attention_fwd(const AttnFwdArgs& a, int device, uintptr_t stream);

// fp32 scratch attention_bwd needs: 2 floats per (query row, q head) (the
// rowsum(dout * out) term and lse in base 2). Pure arithmetic: touches no
// device.
int64_t attention_bwd_workspace_floats(const AttnBwdArgs& a, int device);

// dq, dk, dv. Deterministic whatever a.deterministic says: dq is computed by
// its own kernel (no atomics), dk / dv sum the q heads of a group in a fixed
// order.
void attention_bwd(const AttnBwdArgs& a, float* workspace, int64_t workspace_floats, int device, uintptr_t stream);

}  // namespace tforge::cuda
