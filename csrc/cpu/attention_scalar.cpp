// Portable attention kernels: the fallback for CPUs without AVX2 (and what
// TFORGE_CPU_ISA=scalar forces). Same algorithm, one-lane vectors.
#include <cmath>
#include <cstdint>

#include "common/dtype.h"
#include "cpu/attention.h"

namespace tforge::cpu::scalar {
#include "cpu/vec_one.h"
using Vec = VecOne;

namespace {

inline Vec vmax(Vec a, Vec b) { return {a.v < b.v ? b.v : a.v}; }
inline Vec vround(Vec x) {
  __asm__("" : "+m"(x.v));  // through memory: rounded to float, no FMA contraction across it (any ISA)
  return x;
}
inline Vec vninf0(Vec x) { return {x.v == -INFINITY ? 0.f : x.v}; }
inline Vec vexp2(Vec x) { return {x.v < -126.f ? 0.f : std::exp2(x.v)}; }

// dst[c * ldd + r] (= or +=) src[r * lds + c] * scale * (cscale ? cscale[c] : 1)
template <class TS, class TD, bool ACC>
void transpose(const TS* src, int64_t lds, TD* dst, int64_t ldd, int64_t rows, int64_t cols, float scale,
               const float* cscale) {
  static_assert(!ACC || sizeof(TD) == 4, "accumulating transposes are fp32 only");
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float y = VecOne::load(src + r * lds + c).v * scale * (cscale ? cscale[c] : 1.f);
      TD* d = dst + c * ldd + r;
      if constexpr (ACC) y += VecOne::load(d).v;
      VecOne::store(d, VecOne{y});
    }
}

}  // namespace

#include "cpu/attention_kernels.h"
}  // namespace tforge::cpu::scalar
