// Portable cross-entropy kernels: the fallback for CPUs without AVX2 (libm's expf).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "common/dtype.h"
#include "cpu/cross_entropy.h"

namespace tforge::cpu::scalar {
#include "cpu/vec_one.h"
using Vec = VecOne;

namespace {
inline VecOne vmax(VecOne a, VecOne b) { return !(b.v <= a.v) ? b : a; }
inline VecOne vexp(VecOne x) { return {std::exp(x.v)}; }
inline VecOne vninf0(VecOne x) { return {x.v == -__builtin_inff() ? 0.f : x.v}; }
inline float hmax(VecOne x) { return x.v; }
}  // namespace

#include "cpu/cross_entropy_kernels.h"
}  // namespace tforge::cpu::scalar
