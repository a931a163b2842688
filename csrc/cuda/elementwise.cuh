// Element access shared by the CUDA kernels that stream rows (norm.cu, cross_entropy.cu): fp32 <->
// storage-type conversion (round to nearest even) and VEC-element packs moved as one access.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace tforge::cuda {
namespace {  // per translation unit, as when each kernel file defined these itself

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }

template <class T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

// VEC contiguous elements, loaded and stored as one access (16 bytes when VEC > 1).
template <class T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <class T, int VEC>
__device__ __forceinline__ Pack<T, VEC> ld(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}
template <class T, int VEC>
__device__ __forceinline__ void st(T* p, const Pack<T, VEC>& v) {
  *reinterpret_cast<Pack<T, VEC>*>(p) = v;
}

}  // namespace
}  // namespace tforge::cuda
