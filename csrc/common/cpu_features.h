// Run-time CPU feature detection: which ISA-specific kernels may be called.
#pragma once
#include <string>

namespace tforge {

bool cpu_has_avx2_fma();
// Name of the CPU kernel set chosen at run time: "avx2" or "scalar".
std::string cpu_kernel_isa();

}  // namespace tforge
