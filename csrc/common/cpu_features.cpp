// CPUID checks through the compiler builtins; the AVX2 kernels are built in
// their own translation units and only called when this says so.
#include "common/cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace tforge {

bool cpu_has_avx2_fma() {
#if defined(TFORGE_HAVE_X86)
  // TFORGE_CPU_ISA=scalar forces the fallback (tests run both kernel sets).
  const char* force = std::getenv("TFORGE_CPU_ISA");
  if (force && std::strcmp(force, "scalar") == 0) return false;
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

std::string cpu_kernel_isa() { return cpu_has_avx2_fma() ? "avx2" : "scalar"; }

}  // namespace tforge
