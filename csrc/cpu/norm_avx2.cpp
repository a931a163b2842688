// LayerNorm / RMSNorm kernels built with -mavx2 -mfma (see CMakeLists.txt);
// called only when CPUID reports AVX2+FMA.
#include <immintrin.h>

#include <cstdint>

#include "common/dtype.h"
#include "cpu/norm.h"

namespace tforge::cpu::avx2 {
#include "cpu/vec_one.h"
#include "cpu/vec_avx2.h"
#include "cpu/norm_kernels.h"
}  // namespace tforge::cpu::avx2
