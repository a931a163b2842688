// The CUDA runtime API that tforge's host code calls, emulated (declared in emu/runtime_api.h): one
// device whose memory is host memory, synchronous streams, launch errors through cudaGetLastError.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "emu/state.h"

// ---- the CUDA runtime API (emu/runtime_api.h)

using tforge::emu::g_config;
using tforge::emu::g_last_error;
using tforge::emu::g_last_message;

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : (g_last_error = cudaErrorInvalidDevice); }
cudaError_t cudaGetLastError() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return g_last_error; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    default: return "cudaErrorLaunchFailure";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  if (e == cudaErrorInvalidValue && !g_last_message.empty()) return g_last_message.c_str();
  return cudaGetErrorName(e);
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int device) {
  if (device != 0) return g_last_error = cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = g_config.sms; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *v = g_config.cc_major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *v = g_config.cc_minor; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = tforge::emu::max_smem_optin(); return cudaSuccess;
  }
  return g_last_error = cudaErrorInvalidValue;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return g_last_error = cudaErrorInvalidDevice;
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof(prop->name), "tforge emulator (sm_%d%d, %d SMs)", g_config.cc_major,
                g_config.cc_minor, g_config.sms);
  prop->major = g_config.cc_major;
  prop->minor = g_config.cc_minor;
  prop->multiProcessorCount = g_config.sms;
  prop->sharedMemPerBlockOptin = static_cast<size_t>(tforge::emu::max_smem_optin());
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  if (bytes == 0) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(tforge::emu::g_buffers_mutex);
    tforge::emu::check_global(nullptr, reinterpret_cast<uintptr_t>(p), bytes, true, "cudaMemsetAsync");
  }
  std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  void* m = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (m == nullptr) return g_last_error = cudaErrorMemoryAllocation;
  tforge::emu::register_buffer(reinterpret_cast<uintptr_t>(m), bytes, "cudaMallocAsync");
  *p = m;
  return cudaSuccess;
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  {
    std::lock_guard<std::mutex> lock(tforge::emu::g_buffers_mutex);
    tforge::emu::g_buffers.erase(reinterpret_cast<uintptr_t>(p));
  }
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
