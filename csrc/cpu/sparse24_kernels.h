// Scalar pieces shared by the 2:4 kernels of every ISA: element loads and
// stores per dtype, the epilogue, and the one-column dot product over a range
// of groups (the scalar kernel, and the vector kernels' tails). Included
// *inside* an ISA namespace (after <cstdint>, common/dtype.h and cpu/sparse24.h),
// so each ISA translation unit gets its own copy.

namespace {

// Element i of x or y (dtype kFloat32 / kBFloat16) and of values (also kInt8).
template <int DT>
inline float s24_load(const void* p, int64_t i) {
  if constexpr (DT == kFloat32) return static_cast<const float*>(p)[i];
  else if constexpr (DT == kBFloat16) return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
  else return static_cast<float>(static_cast<const int8_t*>(p)[i]);  // kInt8
}

template <int DT>
inline void s24_store(void* p, int64_t i, float v) {
  if constexpr (DT == kFloat32) static_cast<float*>(p)[i] = v;
  else static_cast<uint16_t*>(p)[i] = float_to_bf16(v);
}

// The epilogue of output column n: acc * scale[n] (int8 values) + bias[n].
inline float s24_epilogue(const Sparse24LinearArgs& a, int64_t n, float acc) {
  if (a.scale) acc *= a.scale[n];
  if (a.bias) acc += a.bias[n];
  return acc;
}

// The nibble of group g of a meta row: i0 = nib & 3, i1 = nib >> 2.
inline unsigned s24_nibble(const uint8_t* meta_row, int64_t g) {
  const unsigned b = meta_row[g >> 1];
  return (g & 1) ? b >> 4 : b & 15u;
}

// sum over groups [g0, g1) of the kept W[n, k] * xr[k]; vrow: the values row of n
// (values_dtype VT), mrow: its meta row, xr: one fp32 row of x (index k).
template <int VT>
inline float s24_dot_groups(const void* vrow, const uint8_t* mrow, const float* xr, int64_t g0, int64_t g1) {
  float acc = 0.f;
  for (int64_t g = g0; g < g1; ++g) {
    const unsigned nib = s24_nibble(mrow, g);
    acc += s24_load<VT>(vrow, 2 * g) * xr[4 * g + (nib & 3u)];
    acc += s24_load<VT>(vrow, 2 * g + 1) * xr[4 * g + (nib >> 2)];
  }
  return acc;
}

// Row m of x as fp32 into dst[0, K).
template <int DT>
inline void s24_x_row_to_f32(const Sparse24LinearArgs& a, int64_t m, float* dst) {
  const size_t esize = DT == kFloat32 ? 4 : 2;
  const void* xr = static_cast<const char*>(a.x) + static_cast<size_t>(m * a.x_stride) * esize;
  for (int64_t k = 0; k < a.K; ++k) dst[k] = s24_load<DT>(xr, k);
}

// y row pointer and element size.
inline size_t s24_esize(int dtype) { return dtype == kFloat32 ? 4 : 2; }

}  // namespace
