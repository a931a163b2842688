// CPU cross-entropy: forward (loss, logsumexp, fused gradient) and the backward of reduction="none"
// (gradient from the saved logsumexp). cross_entropy.cpp checks arguments and picks the ISA;
// cross_entropy_<isa>.cpp hold the row kernels (cross_entropy_kernels.h).
#pragma once
#include "common/cross_entropy_args.h"

namespace tforge::cpu {

// Per-ISA kernels over rows [row_begin, row_end); arguments already checked.
namespace scalar {
void cross_entropy_fwd_rows(const CrossEntropyArgs& a, int64_t row_begin, int64_t row_end);
void cross_entropy_bwd_rows(const CrossEntropyArgs& a, int64_t row_begin, int64_t row_end);
}  // namespace scalar
namespace avx2 {
void cross_entropy_fwd_rows(const CrossEntropyArgs& a, int64_t row_begin, int64_t row_end);
void cross_entropy_bwd_rows(const CrossEntropyArgs& a, int64_t row_begin, int64_t row_end);
}  // namespace avx2

// Checked entry points (float32 / bfloat16 logits); run on up to `threads` OpenMP threads.
void cross_entropy_fwd(const CrossEntropyArgs& a, int threads);
void cross_entropy_bwd(const CrossEntropyArgs& a, int threads);

}  // namespace tforge::cpu
