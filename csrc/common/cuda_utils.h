// Host-side CUDA helpers shared by the csrc/cuda/*.cu translation units:
// error checks that throw (never abort), the "no GPU" error, a guard that
// switches to a device and restores the caller's, and the SM count.
// Include only from .cu files: it needs cuda_runtime.h. The module links
// cudart statically and must load without a driver, so nothing here runs
// before a CUDA entry point is called.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <stdexcept>
#include <string>

#include "common/checks.h"

namespace tforge::cuda {

// Throws std::runtime_error naming the op, the call and CUDA's error string.
inline void check_cuda(cudaError_t e, const char* op, const char* what) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // clear the (non-sticky) error so it is not reported twice
  throw std::runtime_error(concat("tforge._C: ", op, ": ", what, " failed: ", cudaGetErrorName(e), ": ",
                                  cudaGetErrorString(e)));
}

// After a kernel launch: configuration / launch errors (not asynchronous faults).
inline void check_launch(const char* op, const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return;
  throw std::runtime_error(concat("tforge._C: ", op, ": launch of ", kernel, " failed: ", cudaGetErrorName(e),
                                  ": ", cudaGetErrorString(e)));
}

// Number of devices, or throws the "no CUDA device" RuntimeError.
inline int require_devices(const char* op) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    throw std::runtime_error(concat("tforge._C: CUDA kernel called but no CUDA device is available (", op, ": ",
                                    cudaGetErrorString(e), ")"));
  }
  if (n <= 0)
    throw std::runtime_error(
        concat("tforge._C: CUDA kernel called but no CUDA device is available (", op, ": 0 devices)"));
  return n;
}

inline void require_device_index(int device, const char* op) {
  const int n = require_devices(op);
  TF_CHECK_RUNTIME(device >= 0 && device < n, op, ": device index ", device, " is out of range (", n,
                   " CUDA device(s))");
}

// Makes `device` current for the scope and restores the caller's device.
class DeviceGuard {
 public:
  DeviceGuard(int device, const char* op) {
    require_device_index(device, op);
    check_cuda(cudaGetDevice(&prev_), op, "cudaGetDevice");
    if (prev_ != device) {
      check_cuda(cudaSetDevice(device), op, "cudaSetDevice");
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_ && cudaSetDevice(prev_) != cudaSuccess) (void)cudaGetLastError();
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool switched_ = false;
};

// Streaming multiprocessors of `device` (assumed valid), cached per device.
inline int sm_count(int device, const char* op) {
  constexpr int kCached = 64;
  static std::atomic<int> cache[kCached] = {};
  const bool cacheable = device >= 0 && device < kCached;
  if (cacheable) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device), op,
             "cudaDeviceGetAttribute(multiProcessorCount)");
  if (v <= 0) v = 1;
  if (cacheable) cache[device].store(v, std::memory_order_relaxed);
  return v;
}

}  // namespace tforge::cuda
