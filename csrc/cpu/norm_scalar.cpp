// Portable LayerNorm / RMSNorm kernels: the fallback for CPUs without AVX2.
#include <cstdint>

#include "common/dtype.h"
#include "cpu/norm.h"

namespace tforge::cpu::scalar {
#include "cpu/vec_one.h"
using Vec = VecOne;
#include "cpu/norm_kernels.h"
}  // namespace tforge::cpu::scalar
