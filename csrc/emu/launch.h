// Kernel launches under the emulator: TF_LAUNCH(grid, block, smem, stream, kernel)(args...)
// (the CUDA build spells it kernel<<<grid, block, smem, stream>>>(args...), see cuda/ptx.cuh).
// The arguments are converted to the kernel's parameter types once, as a real launch copies
// them into the parameter buffer, and every thread of every CTA then calls the kernel on its
// own copy. Launch-configuration errors set cudaGetLastError, as on the GPU; a fault found
// while the kernel runs (data race, out-of-bounds access, deadlock, trap) throws
// std::runtime_error naming the kernel, the CTA and the threads.
#pragma once
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

namespace tforge::emu {

struct LaunchSite {
  const char* kernel;  // the launch expression, e.g. "norm_fwd_kernel<T, true, V>"
  const char* file;
  int line;
};

// Runs entry(ctx) once per thread of every CTA. [ctx, ctx + ctx_bytes) holds the kernel pointer and
// its arguments: readable by every thread, like the parameter bank of a real launch.
void run_grid(const LaunchSite& site, const void* kernel_id, dim3 grid, dim3 block, size_t smem,
              void (*entry)(void*), const void* ctx, size_t ctx_bytes);

template <class... P>
class Launch {
 public:
  Launch(const LaunchSite& site, dim3 grid, dim3 block, size_t smem, void (*kernel)(P...))
      : site_(site), grid_(grid), block_(block), smem_(smem), kernel_(kernel) {}

  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> params;
    } ctx{kernel_, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    run_grid(site_, reinterpret_cast<const void*>(kernel_), grid_, block_, smem_,
             [](void* c) {
               auto* x = static_cast<Ctx*>(c);
               std::apply(x->kernel, x->params);  // each thread: its own by-value copies
             },
             &ctx, sizeof(ctx));
  }

 private:
  LaunchSite site_;
  dim3 grid_, block_;
  size_t smem_;
  void (*kernel_)(P...);
};

template <class S, class... P>
Launch<P...> make_launch(dim3 grid, dim3 block, size_t smem, S /*stream: launches are synchronous here*/,
                         const LaunchSite& site, void (*kernel)(P...)) {
  return Launch<P...>(site, grid, block, smem, kernel);
}

}  // namespace tforge::emu

#define TF_LAUNCH(grid, block, smem, stream, ...) \
  ::tforge::emu::make_launch(grid, block, smem, stream, {#__VA_ARGS__, __FILE__, __LINE__}, __VA_ARGS__)
#define TF_LAUNCH_NAMED(name, grid, block, smem, stream, ...) \
  ::tforge::emu::make_launch(grid, block, smem, stream, {name, __FILE__, __LINE__}, __VA_ARGS__)
