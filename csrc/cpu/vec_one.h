// One-lane "vector": the portable fallback's Vec, and the tail loop of the
// wider ones. Included *inside* an ISA namespace (after <cstdint>) so each ISA
// translation unit has its own copy; see vec_avx2.h.

struct VecOne {
  static constexpr int W = 1;
  float v;

  static VecOne zero() { return {0.f}; }
  static VecOne set1(float f) { return {f}; }
  static VecOne load(const float* p) { return {*p}; }
  static VecOne load(const uint16_t* p) {
    uint32_t bits = static_cast<uint32_t>(*p) << 16;
    float f;
    __builtin_memcpy(&f, &bits, sizeof(f));
    return {f};
  }
  static void store(float* p, VecOne a) { *p = a.v; }
  static void store(uint16_t* p, VecOne a) {
    uint32_t bits;
    __builtin_memcpy(&bits, &a.v, sizeof(bits));
    if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it quiet, do not round to inf
      *p = static_cast<uint16_t>((bits >> 16) | 0x40u);
      return;
    }
    bits += 0x7fffu + ((bits >> 16) & 1u);
    *p = static_cast<uint16_t>(bits >> 16);
  }
  friend VecOne operator+(VecOne a, VecOne b) { return {a.v + b.v}; }
  friend VecOne operator-(VecOne a, VecOne b) { return {a.v - b.v}; }
  friend VecOne operator*(VecOne a, VecOne b) { return {a.v * b.v}; }
  static VecOne fma(VecOne a, VecOne b, VecOne c) { return {a.v * b.v + c.v}; }
  float hsum() const { return v; }
};
