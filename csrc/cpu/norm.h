// CPU LayerNorm / RMSNorm (plain and fused with a residual add).
// norm.cpp checks arguments and picks the ISA; norm_<isa>.cpp hold the kernels.
#pragma once
#include "common/norm_args.h"

namespace tforge::cpu {

// Per-ISA kernels over rows [row_begin, row_end). dweight/dbias partials are
// accumulated in fp32 into dw_acc/db_acc (length cols, may be null).
namespace scalar {
void norm_fwd_rows(const NormFwdArgs& a, int64_t row_begin, int64_t row_end);
void norm_bwd_rows(const NormBwdArgs& a, int64_t row_begin, int64_t row_end, float* dw_acc, float* db_acc);
}  // namespace scalar
namespace avx2 {
void norm_fwd_rows(const NormFwdArgs& a, int64_t row_begin, int64_t row_end);
void norm_bwd_rows(const NormBwdArgs& a, int64_t row_begin, int64_t row_end, float* dw_acc, float* db_acc);
}  // namespace avx2

// Checked entry points; run on `threads` OpenMP threads.
void norm_fwd(const NormFwdArgs& a, int threads);
void norm_bwd(const NormBwdArgs& a, int threads);

}  // namespace tforge::cpu
